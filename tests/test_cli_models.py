"""The ``efficientvim`` entry point itself."""

from __future__ import annotations

import subprocess
import sys

from efficientvim.cli import main


def test_models_lists_every_variant_with_its_resolution(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8
    assert lines[-1].split()[:3] == ["efficientvim_m4_dist", "res", "256"]


def test_models_pretrained_lists_timm_tags(capsys):
    assert main(["models", "*m2*", "--pretrained"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["efficientvim_m2.e450_in1k", "efficientvim_m2.e300_in1k", "efficientvim_m2_dist.in1k"]


def test_python_dash_m_runs_the_cli_and_rejects_unknown_commands():
    result = subprocess.run([sys.executable, "-m", "efficientvim", "fly"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "invalid choice: 'fly'" in result.stderr
