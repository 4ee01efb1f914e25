"""The README's first command: the demo runs real rounds end to end and says where the
results are (and they are there)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli.main import main

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow]


def test_demo_runs_rounds_and_keeps_its_report(request: pytest.FixtureRequest) -> None:
    ls_bin = os.environ.get("ALC_TEST_LABEL_STUDIO_BIN")
    if not ls_bin:
        pytest.fail("ALC_TEST_LABEL_STUDIO_BIN is not set: run `make test`", pytrace=False)
    args = [
        "demo",
        "--rounds",
        "1",
        "--images",
        "150",
        "--validation-size",
        "10",
        "--batch-size",
        "10",
        "--delay",
        "0",
        "--label-studio-bin",
        ls_bin,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    folder = re.search(r"^demo folder: (.+)$", result.output, re.MULTILINE)
    assert folder is not None, result.output
    workdir = Path(folder.group(1))
    # The default (temporary) folder is kept: the paths printed at the end must exist.
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    rows = [
        line.split()
        for line in result.output.splitlines()
        if line.strip()[:1].isdigit() and ("al-r" in line or "cold start" in line)
    ]
    assert [r[0] for r in rows] == ["0", "1"], result.output
    accuracy = float(rows[1][2])
    assert 0.0 <= accuracy <= 1.0
    report = json.loads((workdir / "state" / "rounds" / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert (workdir / "demo.log").exists()
    assert str(workdir) in result.output
