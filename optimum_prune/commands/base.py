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
    """``prune onnx --model ONNX_DIR --sparsity 0.3 -o OUT``: prune one ONNX folder.

    The options are those of :class:`~optimum_prune.PruningConfig` (``--set KEY=VALUE`` reaches every
    field, YAML values, as a recipe's ``prune`` stage writes them), plus calibration data read with
    ``datasets`` (``--calibration``) for the data-driven criteria and the repair (``--recover``).
    """

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--model", "-m", type=Path, required=True, help=_MODEL_HELP)
        parser.add_argument(
            "--sparsity", type=_fraction, required=True, help="share removed, in [0, 1) (of what: --target)"
        )
        parser.add_argument(
            "--scope",
            default="ffn,heads",
            help="group kinds, comma-separated (ffn,heads,conv,hidden; default: ffn,heads)",
        )
        parser.add_argument(
            "--importance",
            default="l2",
            help="l1, l2, tree, obs, fidelity (data-free); activation, fluctuation (need --calibration)",
        )
        parser.add_argument(
            "--allocation", default="uniform", help="uniform (default), global or standardized"
        )
        parser.add_argument(
            "--target",
            default="units",
            help="what --sparsity measures: units (default), params, flops or latency",
        )
        parser.add_argument(
            "--round-to",
            type=_round_to,
            default=None,
            metavar="N|KIND=N,...",
            help="keep multiples of N units per group, e.g. 8 or conv=16,ffn=8 (default: 1)",
        )
        parser.add_argument("--min-units", type=int, default=None, help="units kept per group (default 1)")
        parser.add_argument(
            "--recover",
            action="store_true",
            help="refit the consumers of pruned groups by least squares (on --calibration, else on "
            "generated inputs)",
        )
        parser.add_argument("--exclude", default="", help="comma-separated substrings of seed names to skip")
        parser.add_argument(
            "--prune-kv-heads", action="store_true", help="also prune heads that resize the KV cache"
        )
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any PruningConfig field (YAML value), e.g. --set recover='{sequential: true, cv_folds: 4}' "
            "or --set recover.damp=0.1",
        )
        data = parser.add_argument_group("calibration data (datasets; the Hub is never contacted)")
        data.add_argument(
            "--calibration",
            default=None,
            metavar="NAME",
            help="rotten_tomatoes (built in), a datasets builder (csv, json, text, parquet, imagefolder) "
            "with --calibration-files, or a save_to_disk folder",
        )
        data.add_argument("--calibration-files", default=None, help="data files of the builder")
        data.add_argument("--calibration-split", default="train", help="split to read (default: train)")
        data.add_argument(
            "--calibration-column", default=None, help="text (or image) column (default: text / image)"
        )
        data.add_argument("--num-samples", type=int, default=128, help="calibration examples (default 128)")
        data.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
        parser.add_argument("--file-name", default="model.onnx", help="ONNX file in the folder")
        parser.add_argument("--no-verify", action="store_true", help="skip the exactness oracle")
        parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    def stage_options(self) -> dict:
        """The flat ``prune`` stage mapping these arguments describe (validated by ``PruneStageConfig``)."""
        from optimum_prune.errors import ConfigError
        from optimum_prune.pipeline import apply_overrides, parse_overrides

        a = self.args
        options: dict = {
            "sparsity": a.sparsity,
            "scope": a.scope,
            "importance": a.importance,
            "allocation": a.allocation,
            "target": a.target,
            "exclude": [s.strip() for s in a.exclude.split(",") if s.strip()],
            "prune_kv_heads": a.prune_kv_heads,
        }
        if a.round_to is not None:
            options["round_to"] = a.round_to
        if a.min_units is not None:
            options["min_units"] = a.min_units
        if a.recover:
            options["recover"] = True
        for item in a.overrides:
            if not item.partition("=")[0].strip() or "=" not in item:
                raise ConfigError(f"--set takes KEY=VALUE (e.g. recover.damp=0.1); got {item!r}")
        # the prune stage's overrides of `prune run`: a dotted key sets one key inside a mapping option
        options = apply_overrides(options, parse_overrides([f"prune.{item}" for item in a.overrides])
                                  .get("prune", {}))
        if a.calibration is not None:
            calibration = {"name": a.calibration, "split": a.calibration_split, "num_samples": a.num_samples,
                           "max_length": a.max_length}
            if a.calibration_files is not None:
                calibration["data_files"] = a.calibration_files
            if a.calibration_column is not None:
                calibration["text_column"] = calibration["image_column"] = a.calibration_column
            options["calibration"] = calibration
        elif a.calibration_files is not None or a.calibration_column is not None:
            raise ConfigError("--calibration-files / --calibration-column describe --calibration NAME; "
                              "add --calibration (e.g. --calibration csv --calibration-files data.csv)")
        return options

    def execute(self) -> int:
        from optimum_prune.errors import CalibrationRequiredError, ConfigError
        from optimum_prune.pruner import ORTPruner
        from optimum_prune.stages import read_report
        from optimum_prune.stages.prune import PruneStageConfig, load_calibration

        a = self.args
        options = self.stage_options()
        try:
            stage = PruneStageConfig.from_dict(options, where="prune onnx")
        except CalibrationRequiredError as e:  # the stage's check, said in the command's words
            raise ConfigError(
                f"--importance {options['importance']} needs calibration data: add --calibration NAME "
                "(e.g. --calibration rotten_tomatoes, or --calibration csv --calibration-files data.csv "
                "--calibration-column text), or choose a data-free criterion (l1, l2, tree, obs, fidelity)"
            ) from e
        pruner = ORTPruner.from_pretrained(a.model, file_name=a.file_name)
        options = dict(stage.prune_options)
        if stage.calibration is not None:
            _quiet_libraries()
            options["calibration"] = load_calibration(Path(a.model), stage.calibration)
        out = pruner.prune(stage.pruning, a.output, **options)
        entry = read_report(out)[-1]
        removed = 1 - entry["params_after"] / max(entry["params_before"], 1)
        print(
            f"pruned {entry['groups_pruned']}/{entry['groups_found']} groups, units removed "
            f"{entry['units_removed']}, params {entry['params_before']:,} -> {entry['params_after']:,} "
            f"(-{removed:.1%}) in {entry['seconds']:.1f} s"
        )
        if entry.get("repair"):
            rep = entry["repair"]
            print(
                f"repair: {rep['consumers']} consumers refitted on {_describe_data(rep.get('calibration'))}, "
                f"mean relative layer error {rep['mean_error_before']:.4f} -> {rep['mean_error_after']:.4f}"
            )
        for hint in entry.get("hints", []):
            print(f"hint: {hint}")
        if stage.verify and not a.no_verify:
            from optimum_prune.verify import verify

            result = verify(a.model, out, file_name=a.file_name)
            print(
                f"oracle: max abs error {result.max_abs_error:.2e}, "
                f"max rel error {result.max_rel_error:.2e}, "
                f"{'exact' if result.exact else 'not exact (normalisation-coupled groups)'}"
            )
        print(f"written: {out}")
        return 0


def _round_to(value: str) -> int | dict[str, int]:
    """``8`` or ``conv=16,ffn=8`` (the kinds are checked by ``PruningConfig``)."""
    try:
        if "=" not in value:
            return int(value)
        out = {}
        for item in value.split(","):
            kind, _, n = item.partition("=")
            out[kind.strip()] = int(n)
        return out
    except ValueError:
        raise ArgumentTypeError(f"expected N or KIND=N,... (e.g. 8 or conv=16,ffn=8), got {value!r}"
                                ) from None


def _describe_data(calibration: dict | None) -> str:
    """A few words on the data a repair was fitted on, from its report entry."""
    if not calibration:
        return "calibration data"
    source = calibration.get("source") or "calibration data"
    rows = calibration.get("num_samples")
    return f"{source} ({rows} rows)" if rows else str(source)


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
