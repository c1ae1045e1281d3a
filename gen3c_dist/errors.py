"""The one exception type for a user's mistake, apart from the project's own bugs.

:class:`InputError` means "the input is wrong": a config value, a file, a layout that does not fit the world,
a checkpoint that is not what it claims. The entry point prints it as one line naming the input and the
problem, with no traceback, on every rank, and exits with status 2. Any other exception is a bug or an
environment failure: it keeps its traceback, and torchrun's error record names the rank that raised it.

It subclasses ``ValueError`` so that code (and tests) written against "a bad value raises ValueError" keeps
working; the distinction the entry point draws is ``InputError`` versus everything else.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class InputError(ValueError):
    """A bad input: the message names the input (config key, file, batch line) and what is wrong with it.

    ``reported`` is set once the line has been printed (the runner prints it before any rank may leave, since
    under torchrun the first rank to exit gets the others killed); the entry point then does not repeat it.
    """

    reported: bool = False


class SharedInputError(InputError):
    """An :class:`InputError` that every rank of the job raises together (a check all ranks ran and agreed on).

    No rank is left waiting in a collective, so the fault guard lets it pass without the failure protocol.
    """


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Re-raise a ``ValueError`` of the block as an :class:`InputError` with the same message.

    For loaders of user files that raise ``ValueError`` with one line naming the file and the problem (the
    video and multi-view inputs): at the runner's boundary that line is an input error, printed without a
    traceback. Any other exception passes unchanged.
    """
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None
