"""The suites. Each is a module with a `Case` model, `plan(profile, device, variants, **options)` that
returns the cases of a profile, `run_case(case) -> dict` that measures one case (run in a worker), and
`TIMEOUT_S`. They register through the `attnbench.suites` entry points (pyproject.toml), like any
plugin's suite: the harness finds them with harness.plugins.suite(name)."""
