"""The bad-input battery for configs, models and runs: every mistake gives one paragraph that
names the key or file, what was found and what was expected, with no traceback, and leaves the
user's files (data, checkpoints, run directories) exactly as they were.

Most cases run in-process; the `cli` ones go through the installed console scripts.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from lmforge.config.command_line import check_command_line
from lmforge.config.validation import validate_training_config
from lmforge.errors import LmforgeError
from lmforge.tasks import FAMILIES
from tests.helpers import ENV, REPO, compose_config, script, write_conll

# The quickest complete run: one epoch, no before/after evaluation, no baselines.
QUICK = [
    "trainer.max_epochs=1",
    "evaluate_before=false",
    "compare.baselines=[]",
    "compare.max_flipped=0",
]


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under `roots` (files or folders), keyed by path."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            digests[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def assert_clear(message: str, *expected: str) -> None:
    """One paragraph, no traceback, naming what the case is about."""
    text = message.strip().removeprefix("lmforge: error: ")
    print(text)  # shown with -s, and on failure
    assert "\n" not in text, message
    assert "Traceback" not in message
    for part in expected:
        assert part in text, f"{part!r} not in: {text}"


def refused(cfg) -> str:
    """Validate a config; return the one-paragraph message it is refused with."""
    with pytest.raises(LmforgeError) as caught:
        validate_training_config(cfg)
    return str(caught.value)


def refused_line(config_name: str, *argv: str) -> str:
    """Check a command line as the console scripts do before Hydra runs."""
    with pytest.raises(LmforgeError) as caught:
        check_command_line(config_name, list(argv))
    return str(caught.value)


def cli(name: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script(name), *args],
        cwd=cwd,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished_run(tiny_full_run) -> Path:
    """A complete tiny classification run: checkpoints, config.yaml, metrics.json."""
    return tiny_full_run[0]


@pytest.fixture
def users_files(tiny_data, tiny_model, finished_run):
    """Fingerprints of the user's data, model and run before a case; compared after it."""
    roots = (tiny_data, tiny_model, finished_run)
    before = snapshot(*roots)
    yield
    assert snapshot(*roots) == before


# ----- config ---------------------------------------------------------------------------------


def test_unknown_group_option_lists_the_options(tmp_path):  # cli
    result = cli("lmforge-train", "model=nonexistent", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(
        result.stderr,
        "model=nonexistent",
        "there is no model option 'nonexistent'",
        "expected one of bert2bert, dpo, dpo_scratch, gpt2, gpt2_scratch, masked_lm,",
    )
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def test_unknown_option_of_an_optional_group_is_not_skipped_silently():
    # Hydra itself ignores a missing option of an `optional` group and runs without it.
    message = refused_line("train", "experiment=debian_ner")
    assert_clear(message, "experiment=debian_ner", "Did you mean experiment=debian_ner_minilm?")


def test_unknown_key_suggests_the_closest_one(tmp_path):  # cli
    result = cli("lmforge-train", "optimizer.lrr=1e-3", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(
        result.stderr,
        "optimizer.lrr is not a key of the train config",
        "Did you mean optimizer.lr?",
        "+optimizer.lrr=1e-3",
    )
    assert not (tmp_path / "outputs").exists()


def test_unknown_trainer_key_suggests_max_epochs():
    message = refused_line("train", "trainer.max_epoch=3")
    assert_clear(message, "trainer.max_epoch", "Did you mean trainer.max_epochs?")


def test_unknown_top_level_key(make_cfg):
    message = refused(make_cfg("+max_epochs=3"))
    assert_clear(
        message,
        "max_epochs is not a top-level key of the training config",
        "Did you mean trainer.max_epochs?",
    )


def test_wrong_type_of_epochs(make_cfg):
    message = refused(make_cfg("trainer.max_epochs=abc"))
    assert_clear(message, "trainer.max_epochs must be a whole number", "got 'abc'")


def test_wrong_type_of_learning_rate(make_cfg):
    message = refused(make_cfg("optimizer.lr=fast"))
    assert_clear(message, "optimizer.lr must be a number above 0, got 'fast'")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=0", "optimizer.lr must be a number above 0, got 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr must be a number above 0, got -0.001"),
        ("data.batch_size=0", "data.batch_size must be a whole number above 0, got 0"),
        ("data.batch_size=-8", "data.batch_size must be a whole number above 0, got -8"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be at least 1"),
        ("trainer.max_epochs=-5", "trainer.max_epochs must be a whole number of -1 or more"),
    ],
)
def test_zero_or_negative_lr_batch_size_epochs(make_cfg, tmp_path, override, expected):
    from lmforge.train import train

    with pytest.raises(LmforgeError) as caught:
        train(make_cfg(override))
    assert_clear(str(caught.value), expected)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("compile.mode=fastest", "compile.mode"),
        ("compile.enabled=maybe", "compile.enabled"),
        ("data.pad_to_multiple_of=0", "data.pad_to_multiple_of"),
        ("float32_matmul_precision=low", "float32_matmul_precision"),
    ],
)
def test_speed_options_with_bad_values(make_cfg, override, key):
    assert_clear(refused(make_cfg(override)), key)


def test_lora_option_with_full_finetuning(make_cfg):
    message = refused(make_cfg("+finetune.r=8"))
    assert_clear(
        message,
        "finetune.r applies to finetune=lora/dora/qlora; the run uses finetune=full",
        "finetune=lora finetune.r=8",
    )


def test_lora_option_with_full_finetuning_on_the_command_line():
    # Without `+` Hydra refuses the key; the message names the options that have it.
    message = refused_line("train", "finetune.r=8")
    assert_clear(
        message, "finetune.r applies to finetune=lora/dora/qlora; the run uses finetune=full"
    )


def test_distributed_trainer_with_one_device(make_cfg):
    message = refused(make_cfg("trainer=ddp_sim", "trainer.devices=1"))
    assert_clear(message, "DDPStrategy", "trainer.devices=1", "use 2 or more processes")


def test_max_length_beyond_the_models_positions(make_cfg, tmp_path, monkeypatch):
    from lmforge.data.datamodule import TextDataModule
    from lmforge.train import train

    def no_data(self):
        raise AssertionError("the data was read before the config was refused")

    monkeypatch.setattr(TextDataModule, "prepare_data", no_data)
    with pytest.raises(LmforgeError) as caught:
        train(make_cfg("data.max_length=512"))
    assert_clear(
        str(caught.value), "data.max_length=512 is longer than the 128 positions", "128 or less"
    )
    assert not (tmp_path / "cache").exists()


def test_monitored_metric_the_task_does_not_log(make_cfg):
    message = refused(make_cfg("optimized_metric=val/bleu"))
    assert_clear(
        message,
        "optimized_metric='val/bleu' is not a metric the text_classification task logs",
        "val/acc, val/f1_macro",
    )


def test_monitored_metric_of_another_task_named_on_a_callback(make_cfg):
    message = refused(make_cfg("callbacks.early_stopping.monitor=val/perplexity"))
    assert_clear(message, "callbacks.early_stopping.monitor='val/perplexity'", "val/acc")


def test_model_and_data_of_different_tasks(make_cfg):
    message = refused(make_cfg("model=token_classification", "optimized_metric=val/f1"))
    assert_clear(
        message,
        "trains token_classification",
        "data=debian_ner",
        "data._target_ builds TextClassificationDataModule",
    )


def test_the_metric_table_matches_the_task_classes_and_a_real_run(finished_run):
    import json

    for name, family in FAMILIES.items():
        assert family.module_class().task_name == name
    logged = json.loads((finished_run / "metrics.json").read_text())["validation"]
    family = FAMILIES["text_classification"]
    assert logged and all(family.logs(key) for key in logged), logged


def test_every_shipped_config_passes_the_fast_checks():
    from lmforge.config.validation import check_config

    experiments = sorted(p.stem for p in (REPO / "conf/experiment").iterdir())
    for overrides in [[], *[[f"experiment={e}"] for e in experiments], ["finetune=lora"]]:
        cfg = compose_config(["paths.output_dir=/nonexistent/run", *overrides])
        check_config(cfg)


def test_hydra_flags_sweeps_and_hydra_overrides_pass_the_command_line_check():
    check_command_line("train", ["--cfg", "job", "hydra.run.dir=somewhere", "seed=1"])
    check_command_line("train", ["-m", "optimizer.lr=1e-3,3e-3", "data.batch_size=8,16"])
    check_command_line("train", ["-m", "hparams_search=lr_batch_optuna", "hydra/launcher=slurm"])
    check_command_line("train", ["--help"])
    check_command_line("eval", ["--cfg", "job"])  # prints the config with ckpt_path: ???
    message = refused_line("train", "-m", "optimizer.lrr=1e-3,3e-3")
    assert_clear(message, "Did you mean optimizer.lr?")


# ----- model ----------------------------------------------------------------------------------


def test_pretrained_folder_that_is_not_a_model(make_cfg, tiny_data, users_files):
    message = refused(make_cfg(f"model.pretrained={tiny_data}"))
    assert_clear(
        message,
        f"model.pretrained='{tiny_data}' is not a model folder",
        "it holds test.csv, train.csv, validation.csv",
        "a model folder holds config.json",
    )


def test_pretrained_folder_that_does_not_exist(make_cfg, tmp_path):
    message = refused(make_cfg(f"model.pretrained={tmp_path / 'no_model'}"))
    assert_clear(message, "no_model': no such folder", "config.json")


def test_tokenizer_with_more_tokens_than_the_model_embeds(make_cfg, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    bigger = AutoTokenizer.from_pretrained(tiny_model)
    bigger.add_tokens([f"newword{i}" for i in range(50)])
    bigger.save_pretrained(tmp_path / "bigger_tokenizer")
    before = snapshot(tmp_path / "bigger_tokenizer")
    message = refused(make_cfg(f"model.tokenizer={tmp_path / 'bigger_tokenizer'}"))
    assert_clear(message, "has 30572 tokens", "embeds only 30522", "model.tokenizer=")
    assert snapshot(tmp_path / "bigger_tokenizer") == before


def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path, tiny_data, users_files):  # cli
    result = cli("lmforge-eval", f"ckpt_path={tiny_data / 'train.csv'}", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(
        result.stderr,
        f"ckpt_path='{tiny_data / 'train.csv'}' is not a checkpoint",
        "<run dir>/checkpoints/best.ckpt",
        "(it is a .csv file)",
    )
    assert not (tmp_path / "outputs").exists()


@pytest.fixture
def checkpoint_in_a_ner_run(tmp_path, finished_run, tiny_ner) -> Path:
    """The classification checkpoint copied into the run directory of an NER run."""
    run = tmp_path / "ner_run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = compose_config(["experiment=debian_ner_minilm", f"data.train_file={tiny_ner}"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    shutil.copytree(finished_run / "tokenizer", run / "tokenizer")
    shutil.copy(finished_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    return run / "checkpoints" / "best.ckpt"


def test_export_of_a_checkpoint_whose_run_is_another_task(tmp_path, checkpoint_in_a_ner_run):  # cli
    before = snapshot(checkpoint_in_a_ner_run.parent.parent)
    result = cli("lmforge-export", f"ckpt_path={checkpoint_in_a_ner_run}", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(
        result.stderr,
        "holds a text_classification model",
        "config.yaml",
        "token_classification run",
    )
    assert snapshot(checkpoint_in_a_ner_run.parent.parent) == before


def test_eval_of_a_checkpoint_on_data_of_another_task(make_cfg, finished_run, tmp_path):
    # A classification checkpoint given NER data (CoNLL) explicitly.
    conll = write_conll(tmp_path / "ner" / "test.conll", [[("Python", "B-LANG"), (".", "O")]])
    from lmforge.evaluate import evaluate

    before = snapshot(finished_run, conll)
    with pytest.raises(LmforgeError) as caught:
        evaluate(
            make_cfg(
                f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}",
                f"test_file={conll}",
                config_name="eval",
                run="eval",
            )
        )
    assert_clear(str(caught.value), f"test_file='{conll}'", "text_classification", ".csv")
    assert snapshot(finished_run, conll) == before
    assert not (tmp_path / "eval").exists()


def test_eval_of_a_ner_checkpoint_on_classification_data(make_cfg, tmp_path, tiny_ner, tiny_data):
    from lmforge.evaluate import evaluate
    from lmforge.train import train

    tagger = make_cfg(
        "experiment=debian_ner_minilm",
        f"data.train_file={tiny_ner / 'train.conll'}",
        "data.max_length=32",
        *QUICK,
        run="tagger",
    )
    train(tagger)
    before = snapshot(tiny_data, tmp_path / "tagger")
    with pytest.raises(LmforgeError) as caught:
        evaluate(
            make_cfg(
                f"ckpt_path={tmp_path / 'tagger' / 'checkpoints' / 'best.ckpt'}",
                f"test_file={tiny_data / 'test.csv'}",
                config_name="eval",
                run="eval",
            )
        )
    assert_clear(
        str(caught.value),
        f"test_file='{tiny_data / 'test.csv'}' does not fit the checkpoint's token_classification",
        "'tokens' is not a column",
        "text, label",
    )
    assert snapshot(tiny_data, tmp_path / "tagger") == before


# ----- runs -----------------------------------------------------------------------------------


def test_predict_with_a_checkpoint_that_does_not_exist(tmp_path):  # cli
    result = cli("lmforge-predict", "ckpt_path=/no/such.ckpt", "input=some text", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(result.stderr, "ckpt_path='/no/such.ckpt': no such checkpoint file")
    assert not (tmp_path / "outputs").exists()


def test_eval_and_export_with_a_checkpoint_that_does_not_exist(tmp_path):
    for command in ("eval", "export"):
        message = refused_line(command, "ckpt_path=/no/such.ckpt")
        assert_clear(message, "ckpt_path='/no/such.ckpt': no such checkpoint file")
    assert_clear(refused_line("eval"), "ckpt_path is required")


def test_resume_of_a_directory_that_does_not_exist(tmp_path):  # cli
    result = cli("lmforge-train", f"resume={tmp_path / 'gone'}", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(result.stderr, f"resume='{tmp_path / 'gone'}': no such run directory")
    assert not (tmp_path / "gone").exists()


def test_resume_of_a_finished_run(tmp_path, finished_run, users_files):  # cli
    result = cli("lmforge-train", f"resume={finished_run}", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(result.stderr, "that run finished (metrics.json is written)", "lmforge-eval")
    assert not (finished_run / ".hydra").exists()  # Hydra never got to write its record


def test_new_run_in_the_directory_of_a_finished_run(tmp_path, finished_run, users_files):  # cli
    result = cli("lmforge-train", f"hydra.run.dir={finished_run}", cwd=tmp_path)
    assert result.returncode != 0
    assert_clear(
        result.stderr,
        f"hydra.run.dir='{finished_run}' already holds a finished run",
        "never overwrites",
    )
    assert not (finished_run / ".hydra").exists()


def test_train_in_process_into_a_finished_run_is_refused(make_cfg, finished_run, users_files):
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(finished_run)
    message = refused(cfg)
    assert_clear(message, "paths.output_dir=", "already holds a finished run")


def test_hydra_full_error_shows_the_traceback(tmp_path):  # cli
    result = cli("lmforge-train", "optimizer.lr=-1", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "optimizer.lr must be a number above 0" in result.stderr


# ----- speed: config mistakes fail before torch is imported -----------------------------------

PROBE = """
import sys, time
started = time.perf_counter()
sys.argv = ["lmforge-train", *sys.argv[1:]]
from lmforge.cli import train_main
try:
    train_main()
except SystemExit as stop:
    code = stop.code
heavy = [m for m in ("torch", "transformers", "lightning", "datasets") if m in sys.modules]
print("EXIT", code, "HEAVY", heavy, "SECONDS", round(time.perf_counter() - started, 2))
"""


@pytest.mark.parametrize(
    "override", ["optimizer.lr=-1", "optimizer.lrr=1e-3", "trainer.max_epochs=abc"]
)
def test_config_mistakes_fail_without_importing_torch(tmp_path, override):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, override],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.perf_counter() - started
    print(f"{override}: {result.stdout.strip()} (process wall {wall:.2f} s)")
    assert "EXIT 1 HEAVY []" in result.stdout, result.stdout + result.stderr
    assert_clear(result.stderr, override.split("=")[0])


def test_model_fit_mistakes_fail_without_importing_lightning_or_datasets(tmp_path):
    # The embedded model has 512 positions; reading its config and tokenizer needs
    # transformers (and so torch), but not Lightning or datasets.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "data.max_length=4096"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "EXIT 1 HEAVY ['torch', 'transformers']" in result.stdout, result.stdout + result.stderr
    assert_clear(result.stderr, "data.max_length")


def test_a_model_whose_keys_read_missing_data_keys_gets_the_mismatch_message():
    # model=question_answering reads data.version_2_with_negative, which classification data
    # lacks: the checks report the mismatch instead of failing on the interpolation.
    message = refused(compose_config(["model=question_answering"]))
    assert_clear(
        message,
        "model._target_ trains question_answering",
        "data=squad_v2",
        "(experiment=debian_qa_minilm)",
    )
    assert "<...>" not in message


def test_an_error_raised_while_a_config_node_is_built_is_printed_as_itself(capsys):
    from hydra.errors import InstantiationException

    from lmforge.cli import user_errors

    with pytest.raises(SystemExit) as exit_info, user_errors():
        try:
            raise LmforgeError("data.doc_stride=200 must be less than data.max_length=192.")
        except LmforgeError as err:
            raise InstantiationException("Error in call to target 'X'") from err
    assert exit_info.value.code == 1
    assert_clear(capsys.readouterr().err, "data.doc_stride=200 must be less than")
