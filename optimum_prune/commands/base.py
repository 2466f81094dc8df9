"""The ``prune`` command tree, built on Optimum's ``BaseOptimumCLICommand``.

Registered into ``optimum-cli`` by ``optimum/commands/register/register_prune.py`` and used as is by the
standalone ``optimum-prune`` script (:mod:`optimum_prune.commands.cli`). This module only imports
``argparse`` and Optimum's light command base: the heavy imports happen inside ``run()``.

Every subcommand reports a user error (bad argument, missing folder, unknown recipe key) as one line on
stderr and exits with status 2; an unexpected failure exits with status 1 and its traceback.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser, ArgumentTypeError
from pathlib import Path

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

USER_ERROR = 2


def _prog() -> str:
    """How the user called us: ``optimum-prune`` or ``optimum-cli prune``."""
    return "optimum-prune" if Path(sys.argv[0]).name.startswith("optimum-prune") else "optimum-cli prune"


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a number in [0, 1), got {value!r}") from None
    if not 0.0 <= f < 1.0:
        raise ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return f


class _PruneSubcommand(BaseOptimumCLICommand):
    """Runs :meth:`execute` and turns optimum-prune errors into one line on stderr and exit status 2."""

    def run(self) -> None:
        from optimum_prune.errors import PruningError

        try:
            code = self.execute()
        except (PruningError, FileNotFoundError, NotADirectoryError) as e:
            print(f"{_prog()} {self.COMMAND.name}: error: {e}", file=sys.stderr)
            sys.exit(USER_ERROR)
        if code:
            sys.exit(code)

    def execute(self) -> int:
        """Do the work; return an exit status (0: success)."""
        raise NotImplementedError


class PruneRunCommand(_PruneSubcommand):
    """``prune run RECIPE --model DIR -o OUT``: run a recipe (YAML) and print its report."""

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("recipe", type=Path, help="recipe YAML file (see recipes/)")
        parser.add_argument(
            "--model",
            "-m",
            default=None,
            help="Hugging Face or ONNX model folder, or a built-in model name (default: the recipe's model)",
        )
        parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="STAGE.KEY=VALUE",
            help="override a stage option (YAML value), e.g. --set benchmark.repeats=3",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def execute(self) -> int:
        from optimum_prune.pipeline import Pipeline, parse_overrides
        from optimum_prune.report import format_table
        from optimum_prune.stages import read_report

        _quiet_libraries()
        pipeline = Pipeline.from_recipe(self.args.recipe, overrides=parse_overrides(self.args.overrides))
        final = pipeline.run(self.args.model, self.args.output, progress=not self.args.no_progress)
        print(format_table(read_report(final)))
        print(f"final model: {final}\nreport: {Path(self.args.output).resolve() / 'report.md'}")
        return 0


_MODEL_HELP = "folder holding model.onnx, or an encoder-decoder export (encoder_model.onnx, ...)"


class PruneONNXCommand(_PruneSubcommand):
    """``prune onnx --model ONNX_DIR --sparsity 0.3 -o OUT``: prune one ONNX folder."""

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--model", "-m", type=Path, required=True, help=_MODEL_HELP)
        parser.add_argument(
            "--sparsity", type=_fraction, required=True, help="share of units removed, in [0, 1)"
        )
        parser.add_argument(
            "--scope",
            default="ffn,heads",
            help="group kinds, comma-separated (ffn,heads,conv,hidden; default: ffn,heads)",
        )
        parser.add_argument("--importance", default="l2", help="importance criterion (default: l2)")
        parser.add_argument("--exclude", default="", help="comma-separated substrings of seed names to skip")
        parser.add_argument(
            "--prune-kv-heads", action="store_true", help="also prune heads that resize the KV cache"
        )
        parser.add_argument("--file-name", default="model.onnx", help="ONNX file in the folder")
        parser.add_argument("--no-verify", action="store_true", help="skip the exactness oracle")
        parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    def execute(self) -> int:
        from optimum_prune.configuration import PruningConfig
        from optimum_prune.pruner import ORTPruner

        a = self.args
        exclude = tuple(s.strip() for s in a.exclude.split(",") if s.strip())
        config = PruningConfig(
            sparsity=a.sparsity,
            scope=a.scope,
            importance=a.importance,
            exclude=exclude,
            prune_kv_heads=a.prune_kv_heads,
        )
        out = ORTPruner.from_pretrained(a.model, file_name=a.file_name).prune(config, a.output)
        from optimum_prune.stages import read_report

        entry = read_report(out)[-1]
        removed = 1 - entry["params_after"] / max(entry["params_before"], 1)
        print(
            f"pruned {entry['groups_pruned']}/{entry['groups_found']} groups, units removed "
            f"{entry['units_removed']}, params {entry['params_before']:,} -> {entry['params_after']:,} "
            f"(-{removed:.1%}) in {entry['seconds']:.1f} s"
        )
        if not a.no_verify:
            from optimum_prune.verify import verify

            result = verify(a.model, out, file_name=a.file_name)
            print(
                f"oracle: max abs error {result.max_abs_error:.2e}, "
                f"max rel error {result.max_rel_error:.2e}, "
                f"{'exact' if result.exact else 'not exact (normalisation-coupled groups)'}"
            )
        print(f"written: {out}")
        return 0


class PruneAnalyzeCommand(_PruneSubcommand):
    """``prune analyze --model ONNX_DIR``: the groups found, by kind, and why some are not prunable."""

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--model", "-m", type=Path, required=True, help=_MODEL_HELP)
        parser.add_argument("--file-name", default="model.onnx", help="ONNX file in the folder")
        parser.add_argument("--json", action="store_true", help="print the full analysis as JSON")

    def execute(self) -> int:
        import json

        from optimum_prune.pruner import ORTPruner

        report = ORTPruner.from_pretrained(self.args.model, file_name=self.args.file_name).analyze()
        if self.args.json:
            print(json.dumps(report.to_dict(), indent=1))
        else:
            print(f"params {report.params:,}, FLOPs {report.flops:,} (batch 1, sequence 128)")
            print(report)
        return 0


class PruneVerifyCommand(_PruneSubcommand):
    """``prune verify DENSE PRUNED``: the exactness oracle; exit status 1 when exact groups disagree."""

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("dense", type=Path, help="the dense ONNX folder the pruned one was made from")
        parser.add_argument("pruned", type=Path, help="the pruned folder (holds pruning_plan.json)")
        parser.add_argument("--file-name", default="model.onnx", help="ONNX file in both folders")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def execute(self) -> int:
        import json

        from optimum_prune.verify import verify

        result = verify(self.args.dense, self.args.pruned, file_name=self.args.file_name)
        if self.args.json:
            print(json.dumps(result.to_dict(), indent=1))
        else:
            print(
                f"max abs error {result.max_abs_error:.3e}, max rel error {result.max_rel_error:.3e}, "
                f"exact groups only: {result.exact_groups}, exact: {result.exact}"
            )
        return 1 if result.exact_groups and not result.exact else 0


SUBCOMMANDS = (
    CommandInfo(
        name="run",
        help="Run a pipeline recipe (export, prune, optimize, quantize, evaluate, benchmark).",
        subcommand_class=PruneRunCommand,
    ),
    CommandInfo(name="onnx", help="Prune an ONNX model folder.", subcommand_class=PruneONNXCommand),
    CommandInfo(
        name="analyze",
        help="List the prunable groups of an ONNX model.",
        subcommand_class=PruneAnalyzeCommand,
    ),
    CommandInfo(
        name="verify",
        help="Check a pruned model against its dense model (exactness oracle).",
        subcommand_class=PruneVerifyCommand,
    ),
)


class PruneCommand(BaseOptimumCLICommand):
    """``optimum-cli prune``: structured pruning of ONNX models and pruning pipelines."""

    COMMAND = CommandInfo(name="prune", help="Structured pruning of ONNX models (optimum-prune).")
    SUBCOMMANDS = SUBCOMMANDS


def _quiet_libraries() -> None:
    """Keep the terminal to progress bars and the report: silence library info logs and warnings."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("optimum", "transformers", "onnxruntime", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
