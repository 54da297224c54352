"""Writes the ``.pth`` file that lets ``platform.*`` import after the standard ``platform``.

Run as ``python -m platform.pathhook`` is impossible for the same reason this exists, so the
Makefile runs it by path: ``python platform/pathhook.py``. The ``.pth`` file adds the project
root to ``sys.path`` and, at interpreter start, gives the standard library's ``platform``
module a ``__path__`` pointing at this folder. Every entry point (manage.py, pytest, gunicorn,
celery, uvicorn) then finds ``platform.settings`` whatever imported ``platform`` first.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

PTH_NAME = "llm_platform.pth"


def pth_contents(*, project_root: Path) -> str:
    package_dir = project_root / "platform"
    return (
        f"{project_root}\n"
        "import platform as _p; "
        f"_p.__path__ = getattr(_p, '__path__', None) or [{str(package_dir)!r}]\n"
    )


def install(*, project_root: Path) -> Path:
    target = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(pth_contents(project_root=project_root))
    return target


if __name__ == "__main__":
    print(install(project_root=Path(__file__).resolve().parent.parent))
