"""mult.app: the Gradio search page (talks to mult.serving only).

``launch_app(gallery_dir, local=REPO | server=URL)`` serves it in the background; ``run_app`` is ``mult app``
(blocks until Ctrl-C); ``build_page`` returns the ``gr.Blocks`` for embedding in another app.
"""

from __future__ import annotations

from typing import Any

# Lazy re-exports: `import mult.app` stays cheap (gradio, onnxruntime and faiss load when a name is used).
_EXPORTS = ("build_page", "launch_app", "run_app", "AppHandle", "DIRECTIONS")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from mult.app import search_page

        return getattr(search_page, name)
    raise AttributeError(f"module 'mult.app' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
