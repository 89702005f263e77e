"""`python -m kiln_jobs`: the entry point of the optimization and served-model evaluation Jobs.

    python -m kiln_jobs run --plan plan.json --workdir DIR \\
        [--progress-file FILE] [--termination-log /dev/termination-log]
    python -m kiln_jobs plan-hash --plan plan.json
    python -m kiln_jobs fetch --store URI --plan-hash H --dest DIR [--manifest-sha256 D]
                                                             (Triton's init container, S3)
    python -m kiln_jobs verify --dir DIR --plan-hash H [--manifest-sha256 D]
                                                             (Triton's init container, PVC)
    python -m kiln_jobs delete --store URI --plan-hash H             (retention: delete)
    python -m kiln_jobs openai --triton HOST:PORT --model NAME --tokenizer DIR  (beside Triton)
    python -m kiln_jobs validate-serving --plan plan.json --http http://HOST:PORT --workdir DIR \\
        [--termination-log /dev/termination-log]  (a new Triton revision, before it takes traffic)

Exit codes are `kiln_jobs.errors.ExitCode`: 0 on success, a distinct code per user-facing failure
(one line on stderr, no traceback), 1 with a traceback for anything else (a bug). The termination
log receives a `JobResult` either way. Progress lines go to stdout (see `kiln_jobs.progress`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from kiln_jobs.errors import ExitCode, KilnJobError, SourceNotFound, UserError
from kiln_jobs.manifest import JobResult
from kiln_jobs.plan import Plan

__all__ = ["main"]

log = logging.getLogger("kiln_jobs")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run it, and return the process exit code."""
    args, rest = _parser().parse_known_args(argv)
    if args.command == "openai":
        args.openai_args = rest
    elif rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "plan-hash":
            print(read_plan(args.plan).hash())
            return ExitCode.OK
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "delete":
            return _delete(args)
        if args.command == "openai":
            from kiln_jobs.serving.openai_api import main as openai_main

            return openai_main(args.openai_args)
        if args.command == "validate-serving":
            return _validate_serving(args)
        return _run(args)
    except KilnJobError as err:
        print(f"kiln: {err.reason}: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    except Exception:
        traceback.print_exc()
        return int(ExitCode.BUG)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kiln_jobs", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Plan end to end and publish its artifacts")
    run.add_argument("--plan", type=Path, required=True, help="the Plan as JSON")
    run.add_argument("--workdir", type=Path, required=True, help="scratch that survives restarts")
    run.add_argument("--progress-file", type=Path, help="rewritten with the latest progress")
    run.add_argument("--termination-log", type=Path, help="where the JobResult is written")
    plan_hash = commands.add_parser("plan-hash", help="print a Plan's hash (its artifacts' key)")
    plan_hash.add_argument("--plan", type=Path, required=True, help="the Plan as JSON")
    fetch = commands.add_parser("fetch", help="copy a published plan here, digests checked")
    fetch.add_argument("--store", required=True, help="the artifact store URI")
    fetch.add_argument("--plan-hash", required=True, help="which published plan")
    fetch.add_argument("--dest", type=Path, required=True, help="directory to fill")
    fetch.add_argument("--manifest-sha256", help="the manifest recorded when it was published")
    verify = commands.add_parser(
        "verify", help="check a published plan directory before it is served"
    )
    verify.add_argument("--dir", type=Path, required=True, help="the plan-hash directory")
    verify.add_argument("--plan-hash", required=True, help="which published plan")
    verify.add_argument("--manifest-sha256", help="the manifest recorded when it was published")
    delete = commands.add_parser("delete", help="unpublish a plan and delete its artifacts")
    delete.add_argument("--store", required=True, help="the artifact store URI")
    delete.add_argument("--plan-hash", required=True, help="which published plan")
    # Its own options are parsed by kiln_jobs.serving.openai_api.
    commands.add_parser(
        "openai", help="an OpenAI-compatible endpoint in front of Triton", add_help=False
    )
    validate = commands.add_parser(
        "validate-serving", help="score and time a served model before it takes traffic"
    )
    validate.add_argument("--plan", type=Path, required=True, help="the Plan as JSON")
    validate.add_argument(
        "--http", required=True, help="the candidate Triton's HTTP endpoint, http://host:port"
    )
    validate.add_argument("--workdir", type=Path, required=True, help="scratch space")
    validate.add_argument("--termination-log", type=Path, help="where the JobResult is written")
    return parser


def read_plan(path: Path) -> Plan:
    """Parse a Plan file; a missing or invalid one is a user error with one clear line."""
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise SourceNotFound(f"plan file {path} does not exist") from err
    try:
        return Plan.from_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise UserError(
            f"{path} is not a valid Plan: {where}: {first['msg']} ({err.error_count()} errors)"
        ) from err


def _run(args: argparse.Namespace) -> int:
    # Before torch is imported (below): threads sized to the container's CPU quota.
    from kiln_jobs.threads import configure_cpu_threads

    configure_cpu_threads()
    # Imported here: torch and Model Optimizer take seconds to import and `plan-hash` needs neither.
    from kiln_jobs.progress import ProgressLog
    from kiln_jobs.runner import Run

    run: Run | None = None
    try:
        run = Run(read_plan(args.plan), args.workdir, ProgressLog(args.progress_file))
        result = run.execute()
    except KilnJobError as err:
        failed = JobResult(ok=False, plan_hash="", reason=err.reason, message=err.message)
        _terminate(args.termination_log, run.job_result(err) if run else failed)
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}"[:1000]
        plan_hash = run.plan_hash if run else ""
        _terminate(
            args.termination_log,
            JobResult(ok=False, plan_hash=plan_hash, reason="Bug", message=message),
        )
        raise
    _terminate(args.termination_log, result.job_result())
    where = result.published_dir or result.published_uri
    log.info("%s %s", "already published at" if result.reused else "published", where)
    return ExitCode.OK


def _validate_serving(args: argparse.Namespace) -> int:
    # Before torch is imported (the relay's tokenizer): threads sized to the CPU quota.
    from kiln_jobs.threads import configure_cpu_threads

    configure_cpu_threads()
    from kiln_jobs.serving_validation import ServingValidation, failed_result

    validation: ServingValidation | None = None
    try:
        validation = ServingValidation(read_plan(args.plan), args.http, args.workdir)
        validation.execute()
    except Exception as err:
        result = validation.job_result(err) if validation else failed_result(err)
        _terminate(args.termination_log, result)
        raise
    _terminate(args.termination_log, validation.job_result())
    log.info("the model served at %s passed", args.http)
    return ExitCode.OK


def _fetch(args: argparse.Namespace) -> int:
    from kiln_jobs.publish import open_store, verify_published

    store = open_store(args.store, args.dest / ".kiln-staging")
    manifest = store.fetch(args.plan_hash, args.dest)
    verify_published(args.dest, args.plan_hash, args.manifest_sha256)
    log.info(
        "fetched %s/%s: %d files, digests checked", args.store, args.plan_hash, len(manifest.files)
    )
    return ExitCode.OK


def _verify(args: argparse.Namespace) -> int:
    from kiln_jobs.publish import verify_published

    manifest = verify_published(args.dir, args.plan_hash, args.manifest_sha256)
    log.info("verified %s: %d files match their digests", args.dir, len(manifest.files))
    return ExitCode.OK


def _delete(args: argparse.Namespace) -> int:
    from kiln_jobs.publish import open_store

    removed = open_store(args.store, Path("/tmp")).remove(args.plan_hash)
    log.info(
        "%s %s/%s", "deleted" if removed else "nothing to delete at", args.store, args.plan_hash
    )
    return ExitCode.OK


def _terminate(path: Path | None, result: JobResult) -> None:
    if path is None:
        return
    try:
        path.write_text(result.to_termination_message())
    except OSError as err:
        log.warning("cannot write the termination log %s: %s", path, err)


if __name__ == "__main__":
    sys.exit(main())
