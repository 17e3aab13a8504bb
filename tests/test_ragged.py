"""Ragged batches (harness.ragged): the length distributions, the padded and packed layouts of every variant
that declares them (registry-parametrized, float64 on the CPU), their throughput cases and bad input.

Each layout check is paired with the bug it guards: inputs where a document that saw its neighbour, a
padded key that reached a real query or a recurrent state carried over a boundary would change the output.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from harness import masks, ragged, registry
from harness.attention import softmax_attention
from harness.ragged import RaggedBatch
from harness.registry import Unsupported
from suites.throughput import planning, workloads

TOL = dict(rtol=1e-9, atol=1e-10)  # float64 against float64
HEADS, HEAD_DIM = 2, 8
BATCH = RaggedBatch((5, 0, 9, 3), 12)  # a zero-length sequence, a full-ish one, padding in every row


def layout_variants(layout: str) -> list[str]:
    """Variants that declare the layout and run on this CPU in float64, causal."""
    return [v.name for v in registry.all_variants()
            if ragged.layout_reason(v, layout, True) is None
            and v.supports("cpu", torch.float64, HEAD_DIM, True)[0]]


def draw(shape, seed: int, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def qkv(rows: int, n: int, grad: bool = False):
    return tuple(draw((rows, HEADS, n, HEAD_DIM), seed, grad) for seed in (1, 2, 3))


def kernel_inputs(v, rows: int, n: int, grad: bool = False) -> dict:
    inputs = v.kernel_inputs(rows, HEADS, n, HEAD_DIM, torch.Generator().manual_seed(0))
    activations = ragged.kernel_seq_dims(v)[0] if grad else {}
    return {k: t.requires_grad_(True) if k in activations and t.is_floating_point() else t
            for k, t in inputs.items()}


# --- distributions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["fixed", "uniform", "chat", "uniform:floor=100", "chat:sigma=2.0,seed=3"])
def test_drawn_lengths_are_reproducible_and_within_1_to_n(spec):
    config = ragged.parse_lengths(spec)
    lengths = config.draw(64, 512)
    assert len(lengths) == 64 and all(1 <= n <= 512 for n in lengths)
    assert config.draw(64, 512) == lengths  # the same config and shape: the same batch
    assert ragged.parse_lengths(ragged.spec(config)) == config  # the canonical spec names it again


def test_the_distributions_have_their_stated_shapes():
    assert ragged.parse_lengths("fixed").draw(8, 300) == (300,) * 8
    assert ragged.parse_lengths("fixed:length=7").draw(3, 300) == (7, 7, 7)
    uniform = ragged.parse_lengths("uniform:floor=200").draw(2000, 300)
    assert min(uniform) >= 200 and max(uniform) == 300 and 240 < sum(uniform) / len(uniform) < 260
    chat = sorted(ragged.parse_lengths("chat").draw(4000, 8192))
    median = chat[len(chat) // 2]
    assert 0.8 * 1024 < median < 1.2 * 1024  # median_fraction 1/8
    assert sum(chat) / len(chat) > 1.3 * median  # long-tailed: the mean well above the median
    assert 0.005 < chat.count(8192) / len(chat) < 0.05  # about 2% clipped at N
    assert ragged.parse_lengths("chat:seed=1").draw(64, 512) != ragged.parse_lengths("chat").draw(64, 512)


@pytest.mark.parametrize("spec,message", [
    ("zipf", "unknown length distribution 'zipf'; known: fixed, uniform, chat"),
    ("uniform:ceiling=3", "uniform:ceiling=3'"),
    ("chat:sigma=-1", "sigma"),
    ("chat:sigma", "is not key=value"),
])
def test_a_bad_spec_is_one_value_error(spec, message):
    with pytest.raises(ValueError) as e:
        ragged.parse_lengths(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_lengths_larger_than_n_are_refused():
    with pytest.raises(ValueError, match="uniform:floor=600 is larger than N = 512"):
        ragged.parse_lengths("uniform:floor=600").draw(4, 512)
    with pytest.raises(ValueError, match="fixed:length=513 is larger than N = 512"):
        ragged.parse_lengths("fixed:length=513").draw(4, 512)
    with pytest.raises(ValueError, match="outside"):
        RaggedBatch((3, 13), 12)


def test_pack_and_unpack_are_inverse_at_the_real_positions():
    x = draw((BATCH.batch, HEADS, BATCH.max_len, HEAD_DIM), 0)
    packed = BATCH.pack(x, -2)
    assert packed.shape == (1, HEADS, BATCH.real_tokens, HEAD_DIM)
    back = BATCH.unpack(packed, -2)
    valid = BATCH.valid()[:, None, :, None]
    assert torch.equal(back, torch.where(valid, x, 0.0))
    assert BATCH.offsets() == [0, 5, 5, 14, 17]
    assert BATCH.doc_ids().tolist() == [0] * 5 + [2] * 9 + [3] * 3


# --- packed: each document alone ---------------------------------------------------------------------------

def leaks(v, packed_out, q, k, vv) -> bool:
    """Whether the check below would see a leaky document mask: attention over the whole packed sequence
    (documents seeing their neighbours) differs from the packed output."""
    whole = v.attention(q, k, vv, causal=True)
    return not torch.allclose(whole, packed_out, **TOL)


@pytest.mark.parametrize("name", [n for n in layout_variants("packed") if registry.get(n).attention_fn])
def test_packed_attention_equals_each_document_alone(name):
    v = registry.get(name)
    q, k, vv = qkv(1, BATCH.real_tokens)
    out = ragged.attend(v, q, k, vv, BATCH, "packed", causal=True)
    assert out.shape == q.shape
    starts = BATCH.offsets()
    for start, n in zip(starts, BATCH.lengths, strict=False):
        if n:
            alone = v.attention_reference(*(t[..., start:start + n, :] for t in (q, k, vv)), causal=True)
            torch.testing.assert_close(out[..., start:start + n, :], alone, **TOL)
    assert leaks(v, out, q, k, vv)  # the inputs tell a leaky mask apart


def test_the_dense_document_mask_is_the_per_document_path():
    v = registry.get("vanilla")
    q, k, vv = qkv(1, BATCH.real_tokens)
    torch.testing.assert_close(ragged.document_reference(q, k, vv, BATCH, causal=True),
                               ragged.attend(v, q, k, vv, BATCH, "packed", causal=True), **TOL)
    torch.testing.assert_close(ragged.document_reference(q, k, vv, BATCH, causal=False),
                               ragged.attend(v, q, k, vv, BATCH, "packed", causal=False), **TOL)


def test_a_document_mask_that_lets_a_document_see_its_neighbour_is_caught():
    """The planted bug: doc ids shifted by one position, so the first token of each document is counted in
    the one before (it sees its neighbour)."""
    q, k, vv = qkv(1, BATCH.real_tokens)
    ids = BATCH.doc_ids()
    leaky = torch.cat([ids[1:], ids[-1:]])
    n = BATCH.real_tokens
    leaky_mask = masks.dense(masks.all_of(masks.document(leaky), masks.causal()), n, n)
    wrong = softmax_attention(q, k, vv, leaky_mask)
    right = ragged.attend(registry.get("vanilla"), q, k, vv, BATCH, "packed", causal=True)
    assert not torch.allclose(wrong, right, **TOL)


@pytest.mark.parametrize("name", [n for n in layout_variants("packed") if registry.get(n).kernel])
def test_packed_kernels_reset_their_state_at_document_boundaries(name):
    v = registry.get(name)
    dims = ragged.kernel_seq_dims(v)
    inputs = kernel_inputs(v, 1, BATCH.real_tokens)
    out = ragged.run_kernel(v, inputs, BATCH, "packed", dims)
    alone = ragged.kernel_reference_documents(v, inputs, BATCH, dims)
    torch.testing.assert_close(out, torch.cat(alone, dim=dims[1]), rtol=1e-7, atol=1e-8)
    # The planted bug: the state carried over the boundary (the kernel over the whole packed sequence).
    carried = v.kernel(**inputs)
    assert not torch.allclose(carried, out, rtol=1e-7, atol=1e-8)


# --- padded: the real positions as unpadded, the padding zero -----------------------------------------------

@pytest.mark.parametrize("name", [n for n in layout_variants("padded") if registry.get(n).attention_fn])
def test_padded_attention_at_real_positions_equals_the_unpadded_run(name):
    v = registry.get(name)
    q, k, vv = qkv(BATCH.batch, BATCH.max_len)
    out = ragged.attend(v, q, k, vv, BATCH, "padded", causal=True)
    for b, n in enumerate(BATCH.lengths):
        if n:
            alone = v.attention_reference(*(t[b:b + 1, :, :n] for t in (q, k, vv)), causal=True)
            torch.testing.assert_close(out[b:b + 1, :, :n], alone, **TOL)
        assert torch.equal(out[b, :, n:], torch.zeros_like(out[b, :, n:]))  # exactly zero


def test_a_padding_mask_that_lets_real_queries_see_padded_keys_is_caught():
    """Non-causal padded vanilla: a key-padding bug (padding left visible) changes the real outputs."""
    v = registry.get("vanilla")
    q, k, vv = qkv(BATCH.batch, BATCH.max_len)
    out = ragged.attend(v, q, k, vv, BATCH, "padded", causal=False)
    for b, n in enumerate(BATCH.lengths):
        if n:
            alone = v.attention(*(t[b:b + 1, :, :n] for t in (q, k, vv)))
            torch.testing.assert_close(out[b:b + 1, :, :n], alone, **TOL)
    leaky = v.attention(q, k, vv)  # no padding mask at all
    assert not torch.allclose(leaky[0, :, :5], out[0, :, :5], **TOL)


@pytest.mark.parametrize("name", [n for n in layout_variants("padded") if registry.get(n).kernel])
def test_padded_kernels_at_real_positions_equal_the_unpadded_run(name):
    v = registry.get(name)
    dims, out_dim = ragged.kernel_seq_dims(v)
    inputs = kernel_inputs(v, BATCH.batch, BATCH.max_len)
    out = ragged.run_kernel(v, inputs, BATCH, "padded", (dims, out_dim))
    for b, n in enumerate(BATCH.lengths):
        row = out[b:b + 1].narrow(out_dim, 0, n)
        if n:
            one = {name: t[b:b + 1].narrow(dims[name], 0, n) if name in dims else t
                   for name, t in inputs.items()}
            torch.testing.assert_close(row, v.kernel_reference(**one), rtol=1e-7, atol=1e-8)
        pad = out[b:b + 1].narrow(out_dim, n, BATCH.max_len - n)
        assert torch.equal(pad, torch.zeros_like(pad))


# --- zeros, no NaN, zero gradient --------------------------------------------------------------------------

EMPTY = RaggedBatch((0, 4, 0), 6)  # zero-length sequences: fully padded rows, empty documents


@pytest.mark.parametrize("name", [n for n in layout_variants("padded") if registry.get(n).attention_fn])
def test_fully_padded_rows_give_zeros_and_zero_gradient(name):
    v = registry.get(name)
    q, k, vv = qkv(EMPTY.batch, EMPTY.max_len, grad=True)
    out = ragged.attend(v, q, k, vv, EMPTY, "padded", causal=True)
    out.backward(torch.ones_like(out))
    assert not out.isnan().any()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    valid = EMPTY.valid()[:, None, :, None]
    for t in (q, k, vv):
        assert not t.grad.isnan().any()
        assert torch.equal(torch.where(valid, 0.0, t.grad), torch.zeros_like(t.grad))  # padding: no gradient
    assert q.grad[1, :, :4].abs().sum() > 0  # the real row does get one


@pytest.mark.parametrize("name", [n for n in layout_variants("padded") if registry.get(n).kernel])
def test_fully_padded_kernel_rows_give_zeros_and_no_nan(name):
    v = registry.get(name)
    dims, out_dim = ragged.kernel_seq_dims(v)
    inputs = kernel_inputs(v, EMPTY.batch, EMPTY.max_len, grad=True)
    out = ragged.run_kernel(v, inputs, EMPTY, "padded", (dims, out_dim))
    out.backward(torch.ones_like(out))
    assert not out.isnan().any()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    for t in inputs.values():
        if torch.is_tensor(t) and t.requires_grad:
            assert not t.grad.isnan().any()
            assert torch.equal(t.grad[0], torch.zeros_like(t.grad[0]))  # a fully padded row: no gradient


@pytest.mark.parametrize("name", layout_variants("packed"))
def test_empty_documents_and_an_empty_batch_pack_to_no_nan(name):
    v = registry.get(name)
    for batch in (EMPTY, RaggedBatch((0, 0), 6)):
        if v.attention_fn is not None:
            q, k, vv = qkv(1, batch.real_tokens, grad=True)
            out = ragged.attend(v, q, k, vv, batch, "packed", causal=True)
            assert out.shape == q.shape
            leaves = (q, k, vv)
        else:
            dims = ragged.kernel_seq_dims(v)
            inputs = kernel_inputs(v, 1, batch.real_tokens, grad=True)
            out = ragged.run_kernel(v, inputs, batch, "packed", dims)
            assert out.shape[dims[1]] == batch.real_tokens
            leaves = tuple(t for t in inputs.values() if torch.is_tensor(t) and t.requires_grad)
        assert not out.isnan().any()
        if out.numel():
            out.backward(torch.ones_like(out))
            assert all(not t.grad.isnan().any() for t in leaves if t.grad is not None)


# --- declarations -------------------------------------------------------------------------------------------

def test_every_variant_declares_both_layouts_or_says_why_not():
    for v in registry.all_variants():
        for layout in ragged.RAGGED_LAYOUTS:
            declared = getattr(v.support, layout)
            assert declared is True or (isinstance(declared, str) and declared), (v.name, layout)


def test_an_undeclared_layout_is_unsupported_never_run():
    v = registry.get("flash-sdpa")
    q, k, vv = qkv(BATCH.batch, BATCH.max_len)
    with pytest.raises(Unsupported, match="flash-sdpa padded: SDPA's fused backends"):
        ragged.attend(v, q, k, vv, BATCH, "padded", causal=True)
    linear = registry.get("linear")
    with pytest.raises(Unsupported, match="causally only"):
        ragged.attend(linear, q, k, vv, BATCH, "padded", causal=False)
    plugin = registry.Variant("plugin", "plugin", True, registry.Support(),
                              attention_fn=lambda q, k, v, causal: q)
    reason = ragged.layout_reason(plugin, "packed", True)
    assert reason == "the packed layout is not declared (Support.packed)"


# --- throughput cases ---------------------------------------------------------------------------------------

def ragged_case(**fields) -> planning.Case:
    base = dict(variant="vanilla", device="cpu", mode="fwd", level="kernel", seq_len=64, batch=4,
                total_tokens=256, n_heads=2, head_dim=8, layout="padded", lengths="chat", budget_ms=1.0)
    return planning.Case(**{**base, **fields})


def test_square_cases_keep_their_ids():
    square = ragged_case(layout="square", lengths="fixed")
    before = planning.Case(**{k: v for k, v in square.model_dump().items() if k not in ("layout", "lengths")})
    assert square.case_id == before.case_id
    assert ragged_case().case_id != ragged_case(layout="packed").case_id != square.case_id


@pytest.mark.parametrize("fields,message", [
    (dict(lengths="zipf"), "unknown length distribution"),
    (dict(lengths="uniform:floor=65"), "larger than N = 64"),
    (dict(layout="square", lengths="chat"), "needs a ragged layout"),
    (dict(level="layer"), "kernel level"),
    (dict(mode="decode"), "kernel level"),
    (dict(compiled=True), "runs eager at the grid's shape"),
])
def test_bad_ragged_cases_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ragged_case(**fields)


@pytest.mark.parametrize("variant", ["vanilla", "linear", "mamba2"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_a_ragged_workload_counts_real_tokens(variant, layout):
    case = ragged_case(variant=variant, layout=layout, mode="fwd_bwd")
    batch = case.ragged_batch
    assert batch.lengths == ragged.parse_lengths("chat").draw(4, 64)  # reproducible from the case
    work = workloads.build_workload(case)
    out = work.call()
    assert not out.isnan().any()
    assert work.tokens == batch.real_tokens < 4 * 64
    assert work.padded_tokens == (4 * 64 if layout == "padded" else batch.real_tokens)
    assert work.ragged_path == ragged.path_of(registry.get(variant), layout)
    if variant == "vanilla":
        v = registry.get("vanilla")
        assert work.flops == sum(v.attention_flops("fwd_bwd", 1, 2, 8, n, n, True) for n in batch.lengths)


def test_an_undeclared_layout_is_an_unsupported_row():
    with pytest.raises(Unsupported, match="flash-sdpa padded"):
        workloads.check_level(ragged_case(variant="flash-sdpa"))


def test_the_cpu_grids_add_a_few_ragged_cases():
    quick = planning.plan("quick", "cpu")
    ragged_cases = [c for c in quick if c.layout != "square"]
    grid = planning.THROUGHPUT_GRIDS["cpu", "quick"]
    assert {c.variant for c in ragged_cases} == set(grid.ragged[0].variants)
    assert {(c.layout, c.lengths, c.seq_len, c.mode) for c in ragged_cases} == {
        ("padded", "chat", 512, "fwd"), ("packed", "chat", 512, "fwd")}
    standard = [c for c in planning.plan("standard", "cpu") if c.layout != "square"]
    assert len(standard) == 5 * 2 * 2


def test_lengths_plans_every_kernel_forward_case_in_both_layouts():
    cases = planning.plan("quick", "cpu", variants=["vanilla"], lengths=["uniform:floor=64"])
    assert {(c.level, c.mode, c.layout, c.seq_len) for c in cases} == {
        ("kernel", mode, layout, n) for mode in ("fwd", "fwd_bwd") for layout in ("padded", "packed")
        for n in (128, 512)}
    assert {c.lengths for c in cases} == {"uniform:floor=64"}


@pytest.mark.parametrize("other", [dict(kv_heads=[1]), dict(model="1b"), dict(compiled=True)])
def test_lengths_with_an_axis_it_cannot_combine_with_is_refused_by_the_plan(other):
    with pytest.raises(ValueError, match="do not combine|not with --model or --compile"):
        planning.plan("quick", "cpu", variants=["vanilla"], lengths=["chat"], **other)


# --- the command line ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--lengths", "zipf"], "unknown length distribution 'zipf'; known: fixed, uniform, chat"),
    (["--lengths", "uniform:floor=600", "-n", "512"], "uniform:floor=600 is larger than N = 512"),
    (["--lengths", "chat", "--kv-heads", "2"], "--lengths and --kv-heads do not combine"),
    (["--lengths", "chat", "--find-max-n"], "--find-max-n takes no --lengths"),
    (["--lengths", "chat", "--compile"], "not with --model or --compile"),
    (["--lengths", "chat", "--model", "1b"], "not with --model or --compile"),
])
def test_bad_lengths_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    from harness import cli

    monkeypatch.setattr(sys, "argv", ["attnbench", "run", "--suite", "throughput", "--device", "cpu",
                                      "-v", "vanilla", "--estimate", "--out", str(tmp_path / "run"), *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "Value error" not in err  # pydantic's prefix


# --- the report ---------------------------------------------------------------------------------------------

def report_row(variant, layout, tokens_per_s, status="ok", reason="", n=512, real=700):
    from tests import test_report_fixtures as fx

    config = {"suite": "throughput", "variant": variant, "device": "cpu", "dtype": "float32", "params": "{}",
              "mode": "fwd", "level": "kernel", "batch": 2, "seq_len": n, "n_heads": 1, "head_dim": 64,
              "causal": True, "total_tokens": 1024, "kind": "sweep", "layout": layout, "lengths": "chat"}
    if status != "ok":
        return fx.row(config, status=status, reason=reason)
    return fx.row(config, latency_ms=real / tokens_per_s * 1e3, latency_ms_p20=1.0, latency_ms_p80=1.0,
                  tokens_per_s=tokens_per_s, real_tokens=real,
                  padded_tokens=2 * n if layout == "padded" else real,
                  ragged_path="per-document" if layout == "packed" else "masked-softmax", rounds=7,
                  spread_iqr=0.01, median_ci=0.005, noisy=False, peak_precision="float32",
                  peak_matmul_tflops=0.3)


def test_the_report_charts_padded_against_packed_and_keeps_them_out_of_the_square_curves(tmp_path):
    from harness.report import build, data
    from tests import test_report_fixtures as fx
    from tests.test_report_throughput import sweep_row

    rows = [sweep_row("vanilla", n, 1.0 + n / 100) for n in (256, 1024, 2048)]
    rows += [report_row("vanilla", "padded", 1e5), report_row("vanilla", "packed", 3e5),
             report_row("linear", "padded", 2e5), report_row("linear", "packed", 2.5e5),
             report_row("flash-sdpa", "padded", None, "unsupported",
                        "flash-sdpa padded: SDPA's fused backends"),
             report_row("flash-sdpa", "packed", 4e5)]
    run = fx.write_run(tmp_path / "run", rows)
    results = data.Results.load(run)
    assert len(data.points(data.throughput(results.rows))) == 3  # the square sweep alone
    frame = data.ragged(results.rows).set_index(["variant", "layout"])
    assert frame.loc[("vanilla", "packed"), "tokens_per_s"] == pytest.approx(3e5)
    assert frame.loc[("flash-sdpa", "padded"), "status"] == "unsupported"
    report = build([run], tmp_path / "report")
    assert "ragged" in {c.name for c in report.charts}
    svg = (tmp_path / "report" / "charts" / "ragged.svg").read_text()
    for gid in ("padded:vanilla", "packed:vanilla", "packed:linear", "packed:flash-sdpa"):
        assert f'id="{gid}' in svg, gid
    assert 'id="padded:flash-sdpa' not in svg  # unsupported: no bar, 'n/a'
    page = report.html.read_text()
    for text in ("Ragged batches", "SDPA&#x27;s fused backends", "per-document", "real_tokens"):
        assert text in page, text


# --- xformers' varlen path, through a fake that follows its documented semantics ---------------------------

def fake_block_diagonal_xformers(calls: list):
    """xformers.ops as xformers_packed reaches it (0.0.35's names and keywords): BlockDiagonalMask and
    BlockDiagonalCausalMask.from_seqlens(q_seqlen, kv_seqlen=None, *, device=None), queries in block i
    attending keys in block i only (causal: top-left within the block), on [1, M, H, K]."""

    class BlockDiagonalMask:
        causal = False

        def __init__(self, seqlens):
            self.seqlens = list(seqlens)

        @classmethod
        def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
            calls.append((cls.causal, list(q_seqlen), device))
            return cls(q_seqlen)

    class BlockDiagonalCausalMask(BlockDiagonalMask):
        causal = True

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                   output_dtype=None):
        assert query.shape[0] == 1 and query.shape[1] == sum(attn_bias.seqlens)  # B = 1, M = sum
        move = lambda t: t.movedim(1, -2)  # noqa: E731  [B, M, H, K] -> [B, H, M, K]
        docs = torch.repeat_interleave(torch.arange(len(attn_bias.seqlens)), torch.tensor(attn_bias.seqlens))
        pred = masks.document(docs)
        pred = masks.all_of(pred, masks.causal()) if attn_bias.causal else pred
        n = query.shape[1]
        return softmax_attention(move(query), move(key), move(value), masks.dense(pred, n, n)).movedim(-2, 1)

    bias = SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask,
                           BlockDiagonalCausalMask=BlockDiagonalCausalMask)
    return SimpleNamespace(memory_efficient_attention=memory_efficient_attention,
                           fmha=SimpleNamespace(attn_bias=bias))


@pytest.mark.parametrize("causal", [True, False])
def test_xformers_packs_documents_into_one_block_diagonal_call(monkeypatch, causal):
    from variants import flash

    calls = []
    monkeypatch.setattr(flash, "xformers_ops", lambda: fake_block_diagonal_xformers(calls))
    v = registry.get("flash-xformers")
    assert ragged.path_of(v, "packed") == "xformers-block-diagonal"
    q, k, vv = qkv(1, BATCH.real_tokens)
    out = ragged.attend(v, q, k, vv, BATCH, "packed", causal=causal)
    assert calls == [(causal, [5, 9, 3], q.device)]  # one call; the empty document left out
    torch.testing.assert_close(out, ragged.document_reference(q, k, vv, BATCH, causal), **TOL)
    empty = ragged.attend(v, *qkv(1, 0), RaggedBatch((0, 0), 4), "packed", causal=causal)
    assert empty.shape == (1, HEADS, 0, HEAD_DIM) and len(calls) == 1


# --- FlexAttention's document mask, run eagerly on the CPU (the CUDA path compiles the same call) ----------

@pytest.mark.parametrize("name", ["longformer", "sparse-strided", "sparse-fixed"])
@pytest.mark.parametrize("causal", [True, False])
def test_flex_document_masks_equal_each_document_alone(name, causal):
    from harness import flex

    v = registry.get(name)
    params = {**v.defaults, **v.small_params}
    batch = RaggedBatch((20, 0, 37, 9), 40)  # documents longer than the small patterns' windows and strides
    g = torch.Generator().manual_seed(0)
    q, k, vv = (torch.randn(1, HEADS, batch.real_tokens, 16, generator=g) for _ in range(3))
    make = {"longformer": "longformer_predicate", "sparse-strided": "strided_predicate",
            "sparse-fixed": "fixed_predicate"}[name]
    module = sys.modules[v.module]
    documents = flex.documents(getattr(module, make))
    eager = flex.flex_masked_attention(q, k, vv, documents, causal, {**params, "lengths": batch.lengths},
                                       compiled=False)
    dense = ragged.attend(v, q, k, vv, batch, "packed", causal=causal, **v.small_params)
    assert ragged.path_of(v, "packed", "cpu") == "dense-document-mask"
    assert ragged.path_of(v, "packed", "cuda") == "flex-document-mask"
    for start, n in zip(batch.offsets(), batch.lengths, strict=False):
        if n:
            alone = v.attention_reference(*(t[..., start:start + n, :] for t in (q, k, vv)), causal=causal,
                                          **v.small_params)
            torch.testing.assert_close(eager[..., start:start + n, :], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(dense[..., start:start + n, :], alone, rtol=1e-4, atol=1e-5)
    if name == "sparse-strided":
        return  # a relative pattern (q - k): read at absolute positions it is the same, no bug to plant
    # The planted bug: the pattern read at absolute positions (no document restart) sees other keys: global
    # tokens and fixed blocks are anchored at a document's start.
    absolute = masks.all_of(masks.document(batch.doc_ids()),
                            getattr(module, make)(batch.real_tokens, batch.real_tokens, causal, **params))
    n = batch.real_tokens
    wrong = softmax_attention(q, k, vv, masks.dense(absolute, n, n))
    assert not torch.allclose(wrong, dense, rtol=1e-4, atol=1e-5)


def test_the_padding_mask_broadcasts_over_grouped_kv_heads():
    """Grouped KV heads view the scores as (batch, kv_heads, group, N, N): the (batch, 1, N, N) padding mask
    must line up with the batch, not with the KV heads."""
    from harness.attention import repeat_kv

    v = registry.get("vanilla")
    g = torch.Generator().manual_seed(4)
    q = torch.randn(BATCH.batch, 4, BATCH.max_len, HEAD_DIM, generator=g, dtype=torch.float64)
    k, vv = (torch.randn(BATCH.batch, 2, BATCH.max_len, HEAD_DIM, generator=g, dtype=torch.float64)
             for _ in range(2))
    grouped = ragged.attend(v, q, k, vv, BATCH, "padded", causal=True)
    repeated = ragged.attend(v, q, repeat_kv(k, 2), repeat_kv(vv, 2), BATCH, "padded", causal=True)
    torch.testing.assert_close(grouped, repeated, **TOL)


def test_seq_len_filters_the_grids_ragged_lengths_as_it_filters_fidelity_points():
    assert not [c for c in planning.plan("quick", "cpu", ["vanilla"], seq_lens=[128]) if c.layout != "square"]
    both = planning.plan("quick", "cpu", ["vanilla"], seq_lens=[128, 512])
    kept = [c for c in both if c.layout != "square"]
    assert {(c.seq_len, c.layout) for c in kept} == {(512, "padded"), (512, "packed")}
