"""Building a store: fragments through the model's sites and the SAEs into the store, written unit by unit.

The package is also the API's `build` function: `saezarr.build(input, output, **options)` builds a store and returns
it opened (`saezarr.api.build`), while `saezarr.build.pipeline` and the other modules stay where they are."""

import sys
import types


class _CallablePackage(types.ModuleType):
    """This package, callable as `saezarr.api.build`: a function named `saezarr.build` would otherwise be replaced by
    the package on its first import (the import system sets each subpackage as its parent's attribute)."""

    def __call__(self, *args, **kwargs):
        """Build a store: `saezarr.api.build`."""
        from saezarr.api import build

        return build(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from saezarr.api import build

        return inspect.signature(build)


sys.modules[__name__].__class__ = _CallablePackage
