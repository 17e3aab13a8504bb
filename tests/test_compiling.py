"""harness.compiling: the recompile-limit knob under both of its names, and the eager-fallback check."""

from types import SimpleNamespace

import pytest
import torch

from harness import compiling as hc
from harness import plugins, registry
from harness.context import RunContext


class OldConfig(SimpleNamespace):
    """dynamo's config before torch 2.7: cache_size_limit, accumulated_cache_size_limit."""


def test_raises_the_limits_under_the_names_before_torch_2_7():
    config = OldConfig(cache_size_limit=8, accumulated_cache_size_limit=64)
    hc.raise_recompile_limit(100, config)
    assert config == OldConfig(cache_size_limit=100, accumulated_cache_size_limit=100)


def test_raises_the_limits_under_the_names_since_torch_2_7():
    config = SimpleNamespace(recompile_limit=8, accumulated_recompile_limit=256)
    hc.raise_recompile_limit(100, config)
    assert config == SimpleNamespace(recompile_limit=100, accumulated_recompile_limit=256)  # never lowers


def test_a_config_with_neither_name_is_an_error_that_names_them():
    with pytest.raises(AttributeError, match="recompile_limit, cache_size_limit"):
        hc.raise_recompile_limit(100, SimpleNamespace(accumulated_recompile_limit=1))


def test_the_installed_torch_takes_the_helper():
    import torch._dynamo

    config = torch._dynamo.config
    old = config.recompile_limit, config.accumulated_recompile_limit
    try:
        hc.raise_recompile_limit(hc.RECOMPILE_LIMIT)
        assert config.recompile_limit >= hc.RECOMPILE_LIMIT
        assert config.accumulated_recompile_limit >= hc.RECOMPILE_LIMIT
    finally:
        config.recompile_limit, config.accumulated_recompile_limit = old


def test_a_call_past_the_recompile_limit_is_counted_as_eager():
    """dynamo (no inductor: the graph runs as traced) with a limit of 2: a third shape runs eagerly."""
    import torch._dynamo

    config = torch._dynamo.config
    old = config.recompile_limit
    config.recompile_limit = 2
    try:
        fn = hc.Compiled(lambda x: torch.sin(x) * 2 + x.sum(), compiler=lambda gm, inputs: gm.forward)
        ran = []
        for n in (3, 4, 5, 3):
            before = hc.counts()
            x = torch.randn(n)
            torch.testing.assert_close(fn(x), torch.sin(x) * 2 + x.sum())
            ran.append(hc.fallback_since(before))
        assert ran == [False, False, True, False]
        assert (fn.graph_calls, fn.eager_calls) == (3, 1)
    finally:
        config.recompile_limit = old
        torch._dynamo.reset()


def test_compiles_with_static_shapes(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    hc.Compiled(torch.sin)
    assert seen["dynamic"] is False and callable(seen["backend"])


def test_no_compiled_call_gives_none():
    assert hc.fallback_since(hc.counts()) is None


def test_allow_recompiles_leaves_the_cpu_alone(monkeypatch):
    monkeypatch.setattr(hc, "raise_recompile_limit", lambda *a: pytest.fail("touched dynamo on the CPU"))
    hc.allow_recompiles("cpu", reset=True)


@pytest.mark.cuda
def test_compiled_flex_attention_runs_its_graph_on_cuda():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    fn = hc.Compiled(flex_attention)
    q = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16)
    mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, 256, 256, device="cuda")
    before = hc.counts()
    fn(q, q, q, block_mask=mask)
    assert hc.fallback_since(before) is False


@pytest.fixture
def recompile_limit_one():
    import torch._dynamo

    old = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 1
    yield
    torch._dynamo.config.recompile_limit = old
    torch._dynamo.reset()


@pytest.mark.slow
def test_throughput_records_whether_the_compiled_graph_ran(monkeypatch, recompile_limit_one):
    from harness import runner
    from tests.test_throughput import CONTEXT, SUITE, case

    _, _, plain = runner.execute(SUITE, case(), CONTEXT)
    assert plain["eager_fallback"] is None  # vanilla compiles nothing
    doubled = hc.Compiled(lambda q: q * 2, compiler=lambda gm, inputs: gm.forward)
    monkeypatch.setattr(registry.get("vanilla"), "attention_fn", lambda q, k, v, causal=False: doubled(q))
    status, _, metrics = runner.execute(SUITE, case(), CONTEXT)
    assert status == "ok" and metrics["eager_fallback"] is False


def test_throughput_does_not_time_an_eager_fallback(monkeypatch, recompile_limit_one):
    from harness import runner
    from tests.test_throughput import CONTEXT, SUITE, case

    doubled = hc.Compiled(lambda q: q * 2, compiler=lambda gm, inputs: gm.forward)
    doubled(torch.randn(3))  # takes the one graph the limit allows
    monkeypatch.setattr(registry.get("vanilla"), "attention_fn", lambda q, k, v, causal=False: doubled(q))
    status, reason, metrics = runner.execute(SUITE, case(), CONTEXT)
    assert status == "error" and reason.startswith("EagerFallback: ") and metrics == {}


class Called(Exception):
    pass


@pytest.mark.parametrize("suite", ["throughput", "accuracy", "long-range"])
def test_every_suite_raises_the_recompile_limit_through_the_helper(monkeypatch, suite):
    def spy(device, reset=False, compiled=False):
        raise Called(device)

    monkeypatch.setattr(hc, "allow_recompiles", spy)
    chosen = plugins.suite(suite)
    case = chosen.plan(profile="quick", device="cpu", variants=["vanilla"])[0]
    with pytest.raises(Called, match="cpu"):
        chosen.run_case(case, RunContext())


def test_only_the_helper_touches_dynamos_limits():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sources = [p for d in ("harness", "suites", "variants") for p in (root / d).rglob("*.py")]
    touching = [str(p.relative_to(root)) for p in sources
                if "cache_size_limit" in p.read_text() or "recompile_limit" in p.read_text()]
    assert touching == ["harness/compiling.py"]
