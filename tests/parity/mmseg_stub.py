"""Lets `import mmseg.models` work with mmcv-lite (no compiled ops).

A few unrelated mmseg files do `from mmcv.ops import ...`; mmcv-lite has no `mmcv.ops`. Importing
this module first installs a stub `mmcv.ops` whose every attribute is a placeholder that raises if
it is ever used. DAHead, PSPHead, JPU, FCNHead, ASPPHead and ResNet never touch them.
"""
import sys
import types


def _placeholder(name):
    class _Missing:  # noqa: D401
        def __init__(self, *a, **k):
            raise RuntimeError(f"mmcv.ops.{name} is a stub (mmcv-lite has no compiled ops)")

        def __call__(self, *a, **k):
            raise RuntimeError(f"mmcv.ops.{name} is a stub (mmcv-lite has no compiled ops)")

    _Missing.__name__ = name
    return _Missing


if "mmcv.ops" not in sys.modules:
    ops = types.ModuleType("mmcv.ops")
    ops.__getattr__ = lambda name: _placeholder(name) if not name.startswith("__") else (_ for _ in ()).throw(AttributeError(name))
    sys.modules["mmcv.ops"] = ops
    import mmcv

    mmcv.ops = ops
