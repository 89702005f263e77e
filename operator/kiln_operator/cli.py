"""The `kiln` command: validate and compile resources, print the CRD, run locally, run the operator.

User mistakes end in one line and a non-zero exit; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import yaml

from kiln_operator.compiler import CompileError, CompileOptions, compile_plan
from kiln_operator.validation import Problem, parse_resource

__all__ = ["main"]

# Used only so that validation does not stop at "no artifact store": the operator supplies one.
_PLACEHOLDER_STORE = "pvc://operator-default-store"


def _documents(path: str) -> Iterator[tuple[str, Any | None, Problem | None]]:
    """(label, document, problem) for each YAML document in a file."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        yield path, None, Problem("", f"cannot read: {error.strerror or error}")
        return
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        yield path, None, Problem("", f"{where}invalid YAML: {problem}")
        return
    if not documents:
        yield path, None, Problem("", "no YAML documents in the file")
    for index, document in enumerate(documents):
        name = document.get("metadata", {}).get("name") if isinstance(document, dict) else None
        label = f"{path}: {name}" if name else f"{path}: document {index + 1}"
        yield label, document, None


def _validate(paths: Sequence[str], local: bool, out: TextIO) -> int:
    failures = 0
    checked = 0
    for path in paths:
        for label, document, problem in _documents(path):
            problems = [problem] if problem else _problems(document, local)
            checked += document is not None
            for item in problems:
                print(f"{label}: {item}", file=out)
            failures += bool(problems)
    if failures:
        print(f"{failures} invalid of {max(checked, failures)} checked", file=out)
        return 1
    print(f"{checked} valid", file=out)
    return 0


def _problems(document: Any, local: bool) -> list[Problem]:
    resource, problems = parse_resource(document)
    if resource is None:
        return problems
    options = CompileOptions(
        target="local" if local else "cluster", default_store=_PLACEHOLDER_STORE
    )
    try:
        compile_plan(resource.spec, name=resource.metadata.name, options=options)
    except CompileError as error:
        return [Problem(error.path, error.message)]
    return []


def _load_one(path: str) -> Any:
    """The single ModelOptimization in a file, or SystemExit with the problems."""
    documents = list(_documents(path))
    if len(documents) != 1:
        raise SystemExit(f"{path}: expected one ModelOptimization, found {len(documents)}")
    label, document, problem = documents[0]
    if problem:
        raise SystemExit(f"{label}: {problem}")
    resource, problems = parse_resource(document)
    if resource is None:
        raise SystemExit("\n".join(f"{label}: {p}" for p in problems))
    return resource


def _plan(args: argparse.Namespace) -> int:
    resource = _load_one(args.file)
    options = CompileOptions(
        target=args.target, runtime=args.runtime, default_store=args.store or _PLACEHOLDER_STORE
    )
    try:
        plan = compile_plan(resource.spec, name=resource.metadata.name, options=options)
    except CompileError as error:
        raise SystemExit(f"{args.file}: {error}") from None
    if args.hash:
        print(plan.hash())
    else:
        print(plan.to_json())
    return 0


def _run(args: argparse.Namespace) -> int:
    resource = _load_one(args.file)
    workdir = Path(args.workdir or Path("kiln-runs") / resource.metadata.name).resolve()
    store = args.store or (workdir / "artifacts").as_uri()
    options = CompileOptions(target="local", runtime="local", default_store=store)
    try:
        plan = compile_plan(resource.spec, name=resource.metadata.name, options=options)
    except CompileError as error:
        raise SystemExit(f"{args.file}: {error}") from None
    from kiln_jobs.errors import KilnJobError
    from kiln_jobs.threads import configure_cpu_threads

    configure_cpu_threads()  # before torch is imported
    try:
        from kiln_jobs.local import run_local
    except ImportError as error:
        raise SystemExit(
            f"kiln run needs the job dependencies ({error.name} is missing): "
            "pip install 'kiln[jobs,local]'"
        ) from None
    try:
        smoke = resource.spec.serving.smoke_test
        prompt = {"prompt": smoke.prompt} if smoke is not None else {}
        run_local(plan, workdir, serve=not args.no_serve, keep_serving=args.keep_serving, **prompt)
    except KilnJobError as error:
        print(f"kiln run: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    return 0


def _operator(args: argparse.Namespace) -> int:
    try:
        from kiln_operator.main import run_operator
    except ImportError as error:
        raise SystemExit(
            f"kiln operator needs the operator dependencies ({error.name} is missing): "
            "pip install 'kiln[operator]'"
        ) from None
    return run_operator(args.operator_args)


def _get_resource(command: str, namespace: str, name: str) -> dict[str, Any]:
    """The ModelOptimization, or SystemExit with one line saying why it cannot be read."""
    try:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from kiln_operator.kube import load_kube_config
    except ImportError as error:
        raise SystemExit(
            f"kiln {command} needs the operator dependencies ({error.name} is missing): "
            "pip install 'kiln[operator]'"
        ) from None
    from kiln_operator.api import GROUP, PLURAL, VERSION

    try:
        api = client.CustomObjectsApi(load_kube_config())
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        raise SystemExit(f"kiln {command}: {namespace}/{name}: {error.reason}") from None
    except Exception as error:  # no kubeconfig, no route to the cluster
        raise SystemExit(f"kiln {command}: cannot reach the cluster: {error}") from None
    return cast(dict[str, Any], obj)


def _status(args: argparse.Namespace) -> int:
    from kiln_operator.status_view import render_status

    print(render_status(_get_resource("status", args.namespace, args.name)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from kiln_jobs.errors import KilnJobError
    from kiln_operator.report_view import save_report, save_serving_report

    obj = _get_resource("report", args.namespace, args.name)
    dest = Path(args.out or f"kiln-report-{args.name}").resolve()
    try:
        path, note = save_report(obj, dest)
    except KilnJobError as error:
        print(f"kiln report: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    if note:
        print(note, file=sys.stderr)
    print(path)
    serving = save_serving_report(obj, dest)
    if serving is not None:
        print(serving)
    return 0


def _crd(args: argparse.Namespace) -> int:
    from kiln_operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Optimize and serve models with NVIDIA Model Optimizer and Triton."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check ModelOptimization files")
    validate.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        help="YAML file (repeatable; - for stdin)",
    )
    validate.add_argument(
        "--local", action="store_true", help="validate for kiln run (allows file:// URIs)"
    )
    validate.add_argument("files_rest", nargs="*", help=argparse.SUPPRESS)

    plan = commands.add_parser("plan", help="print the Plan a ModelOptimization compiles to")
    plan.add_argument("-f", "--file", required=True)
    plan.add_argument("--target", choices=("cluster", "local"), default="cluster")
    plan.add_argument("--runtime", default="local", help="job image the plan runs in")
    plan.add_argument("--store", help="artifact store when the spec names none")
    plan.add_argument("--hash", action="store_true", help="print only the plan hash")

    run = commands.add_parser("run", help="optimize, evaluate and serve on this machine")
    run.add_argument("-f", "--file", required=True)
    run.add_argument("--workdir", help="scratch and artifacts (default ./kiln-runs/NAME)")
    run.add_argument("--store", help="artifact store URI (default WORKDIR/artifacts)")
    run.add_argument("--no-serve", action="store_true", help="stop after publishing")
    run.add_argument("--keep-serving", action="store_true", help="leave Triton running")

    status = commands.add_parser("status", help="show a ModelOptimization's progress and numbers")
    status.add_argument("name")
    status.add_argument("-n", "--namespace", default="default")

    report = commands.add_parser(
        "report", help="save a ModelOptimization's report (Markdown and plots) and print its path"
    )
    report.add_argument("name")
    report.add_argument("-n", "--namespace", default="default")
    report.add_argument("--out", help="directory to write into (default ./kiln-report-NAME)")

    commands.add_parser("crd", help="print the CustomResourceDefinition")

    # Its own options are parsed by `kiln operator --help` (kiln_operator.main).
    commands.add_parser("operator", help="run the operator (kopf)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kiln` console script."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "operator":
        args.operator_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handlers = {
        "validate": lambda a: _validate([*a.files, *a.files_rest], a.local, sys.stdout),
        "plan": _plan,
        "run": _run,
        "status": _status,
        "report": _report,
        "crd": _crd,
        "operator": _operator,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
