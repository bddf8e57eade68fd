"""`bentoml build` of serving/bentofile.yaml: the bento the serving image is made from builds,
with the imported champion as its model and the bentofile's packages as its requirements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_bentoml_build_when_champion_is_imported_then_the_bento_builds_with_model_and_packages(
    tmp_path: Path,
) -> None:
    from tests.integration.test_serving import (
        import_alias,
        manifest,
        new_registry,
        register,
        xgb_bundle,
    )

    # Arrange: a champion in a temp registry, imported into a temp BentoML store
    uri = new_registry(tmp_path)
    _, onx = xgb_bundle(seed=7)
    register(uri, tmp_path, onx, manifest(onnx_bytes=onx.SerializeToString()), ("champion",))
    champ = import_alias(tmp_path, uri, "champion")
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "TX_SERVING_MODEL_TAG": champ.bentoml_tag,
        "BENTOML_DO_NOT_TRACK": "True",
    }

    # Act
    build = subprocess.run(
        [bentoml, "build", "-f", "serving/bentofile.yaml", "--output", "tag", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )

    # Assert
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    listed = subprocess.run(
        [bentoml, "list", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    bentos = json.loads(listed.stdout)
    assert len(bentos) == 1
    bento_dir = Path(env["BENTOML_HOME"]) / "bentos" / bentos[0]["tag"].replace(":", "/")
    assert (bento_dir / "src" / "serving" / "service.py").is_file()
    reqs = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==1.4.40" in reqs and "onnxruntime==1.32.0" in reqs
    assert "xgboost-cpu==3.2.0" in reqs  # /v1/explain runs TreeSHAP on the native booster
    import yaml

    bento = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert [m["tag"] for m in bento["services"][0]["models"]] == [champ.bentoml_tag]
