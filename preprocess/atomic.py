"""Atomic file writes (write under a temporary name in the target folder, rename when complete,
with the permissions the umask gives), and checks of output paths before any work."""
import contextlib
import os
import tempfile


def current_umask():
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

        with atomic_path("run/best.pt") as tmp:
            torch.save(state, tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())      # mkstemp makes 0600; outputs follow the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_outputs(outputs, inputs=None):
    """Refuse, before any work, output paths that would destroy an input or cannot be written.

    ``outputs`` and ``inputs`` map a flag name to a path (inputs may be files or folders; an output
    inside an input folder is fine). Raises ValueError naming the flag and the path."""
    resolved = {}
    for flag, path in outputs.items():
        if not path:
            continue
        real = os.path.realpath(path)
        if os.path.isdir(real):
            raise ValueError(f"--{flag}={path} is a directory; give the path of a file to write")
        for input_flag, source in (inputs or {}).items():
            for item in ([source] if isinstance(source, (str, os.PathLike)) else list(source or [])):
                if item and os.path.realpath(item) == real:
                    raise ValueError(f"--{flag}={path} is also the input --{input_flag}; choose another "
                                     f"path (inputs are never overwritten)")
        if real in resolved:
            raise ValueError(f"--{flag} and --{resolved[real]} name the same file {path}")
        resolved[real] = flag
