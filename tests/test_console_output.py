"""What ``usvl`` prints: the top-level help, and one line per epoch when no progress bar is shown."""

import io
import sys

import lightning.pytorch as pl
import pytest
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel
from shipped_configs import smoke

from usvl.callbacks import EpochSummary, format_duration
from usvl.cli import USVLCLI, console_trainer_kwargs, main


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_top_level_help_lists_usvl_data(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usvl data" in out
    assert "fit" in out and "test" in out


def test_progress_bar_stays_on_a_terminal():
    assert console_trainer_kwargs({"callbacks": []}, _Stream(tty=True)) == {}


def test_without_a_terminal_the_bar_is_off_and_each_epoch_prints_a_line():
    configured = pl.Callback()
    kwargs = console_trainer_kwargs({"callbacks": [configured]}, _Stream(tty=False))
    assert kwargs["enable_progress_bar"] is False
    assert kwargs["callbacks"][0] is configured
    assert [type(c) for c in kwargs["callbacks"]] == [pl.Callback, EpochSummary]
    # A bar turned off in the config also gets the lines, even on a terminal; a single callback is kept.
    kwargs = console_trainer_kwargs({"enable_progress_bar": False, "callbacks": configured}, _Stream(tty=True))
    assert [type(c) for c in kwargs["callbacks"]] == [pl.Callback, EpochSummary]
    # The callback is not added twice.
    assert len(console_trainer_kwargs(kwargs, _Stream(tty=False))["callbacks"]) == 2


@pytest.mark.parametrize("tty", [False, True])
def test_usvl_picks_bar_or_epoch_lines_by_terminal(tty, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=[*smoke("thyroid_cls"), "--trainer.logger", "false", "--trainer.default_root_dir",
                        str(tmp_path)])
    callbacks = cli.trainer.callbacks
    assert any(isinstance(c, EpochSummary) for c in callbacks) is not tty
    assert any(isinstance(c, ProgressBar) for c in callbacks) is tty


class _LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("train/loss", output["loss"], on_step=True, on_epoch=True)
        return output

    def validation_step(self, batch, batch_idx):
        self.log("val/auroc", 0.75)
        return super().validation_step(batch, batch_idx)


def test_epoch_summary_prints_loss_validation_metrics_and_time(tmp_path):
    stream = io.StringIO()
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, callbacks=[EpochSummary(stream)], default_root_dir=tmp_path)
    trainer.fit(_LoggingModel())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"epoch {epoch}/3")
        assert "train/loss " in line and "val/auroc 0.7500" in line and "elapsed " in line and "ETA " in line
    assert lines[-1].endswith("ETA 0s")


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (3.2, 123, 3723)] == ["3s", "2m03s", "1h02m03s"]
