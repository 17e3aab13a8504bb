"""The suites. Each is a module that declares what harness.suite asks of a suite: `plan(profile, device,
variants, ...)` that returns the cases of a profile, `run_case(case, context) -> dict` that measures one
case (run in a worker), `TIMEOUT_S`, `case_cost` and `OPTIONS`, and any of the optional capabilities
(`summarize`, `find_max_n`, `import_benchmark_json`, `recipes`, `needs`). They register through the
`attnbench.suites` entry points (pyproject.toml), like any plugin's suite: the harness finds them with
harness.plugins.suite(name). The throughput suite is the package suites.throughput (its module `suite`)."""
