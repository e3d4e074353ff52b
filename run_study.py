"""SegAN-CAT study runner: one command-line entry point, no logic of its own.

    python run_study.py --grid transfer_all            # the whole study, synthetic data
    python run_study.py prepare --brats-root DIR --out STORE.zarr
    python run_study.py --grid transfer_all --data STORE.zarr --budget paper
    python run_study.py report --study DIR
    python run_study.py predict --checkpoint CKPT --input CASE_DIR --out mask.nii.gz
    python run_study.py export --study DIR --cell NAME --out model.zip

Each subcommand lives in its own module exposing ``register(subparsers)``; the
module's parser sets ``func`` to the handler. Imports are lazy so ``prepare`` or
``describe-model`` never pay for Ray or MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module that registers it (order = order in --help)
COMMANDS: dict[str, str] = {
    "study": "study.cli",
    "prepare": "core.data.commands",
    "inspect": "core.data.commands",
    "describe-model": "core.commands",
    "predict": "study.predict_cli",
    "evaluate": "study.predict_cli",
    "export": "study.cli",
    "report": "study.cli",
    "ui": "study.cli",
    "resume": "study.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, import just that subcommand's module (fast start)."""
    parser = argparse.ArgumentParser(
        prog="run_study.py",
        description="SegAN-CAT brain tumour segmentation study runner "
        "(default subcommand: study, e.g. `run_study.py --grid transfer_all`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[only]] if only in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module_name in modules:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run_study.py --grid X` is shorthand for `run_study.py study --grid X`.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["study", *argv]
    parser = build_parser(argv[0])
    args = parser.parse_args(argv)
    args.argv = argv  # the invocation as typed: the resume hint repeats it
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `run_study.py --dry-run | head`
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - user-facing one-line errors
        from core.errors import UserError

        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    code = main()
    from study.reaper import exit_to_watcher

    exit_to_watcher(code)  # a study's local Ray: ended by its watcher, not Ray's slow atexit
    sys.exit(code)
