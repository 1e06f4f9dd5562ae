"""Start a real `rokfs serve` subprocess from a TOML config and drive it with rokctl."""

import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

from rokfs import rokctl


def write_config(tmp_path, extra=""):
    run = tmp_path / "run"
    text = f"""
[pool]
path = "{tmp_path / 'pool'}"
chunk_size = "64K"
[nbd]
socket = "{run / 'nbd.sock'}"
[control]
socket = "{run / 'control.sock'}"
[metrics]
listen = "127.0.0.1:0"
[log]
level = "info"
format = "json"
{extra}
"""
    path = tmp_path / "rokfs.toml"
    path.write_text(text)
    return path


class Daemon:
    def __init__(self, config_path, *flags):
        self.config_path = str(config_path)
        self.flags = flags
        self.proc = None

    def start(self, timeout=30):
        self.log_path = os.path.join(os.path.dirname(self.config_path), "daemon.log")
        self.proc = subprocess.Popen(        # the log goes to a file: a full pipe would block
            [sys.executable, "-m", "rokfs.cli", "serve", "--config", self.config_path,
             *self.flags], stdout=subprocess.PIPE, stderr=open(self.log_path, "a"),
            text=True, bufsize=0)
        self.welcome = self._read_welcome(timeout)
        self.control = re.search(r"control\s+(\S+)", self.welcome).group(1)
        self.nbd_socket = re.search(r"socket=(\S+)$", self.welcome, re.M).group(1)
        m = re.search(r"metrics\s+(http://\S+)", self.welcome)
        self.metrics_url = m.group(1) if m else None
        return self

    def _read_welcome(self, timeout):
        fd, text = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"stop with" not in text:
            ready, _, _ = select.select([fd], [], [], 0.5)
            chunk = os.read(fd, 65536) if ready else b""
            text += chunk
            if not chunk and (self.proc.poll() is not None or time.monotonic() > deadline):
                self.proc.kill()
                out, _ = self.proc.communicate()
                err = self.log()
                raise AssertionError(f"daemon did not start:\n{text.decode()}{out}\n{err}")
        return text.decode()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, self.log()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def rokctl(self, *args):
        """rokctl in this process (same code as the console script): (rc, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = rokctl.main(["--socket", self.control, *args])
            except SystemExit as exc:        # argparse usage errors
                rc = exc.code
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *args):
        rc, out, err = self.rokctl(*args)
        assert rc == 0, (args, rc, err)
        return out

    def json(self, *args):
        return json.loads(self.ok(*args, "-o", "json"))

    def nbd_exports(self):
        listing = subprocess.run(["nbdinfo", "--list", "--json",
                                  f"nbd+unix:///?socket={self.nbd_socket}"],
                                 capture_output=True, text=True, check=True, timeout=30)
        return {e["export-name"]: e for e in json.loads(listing.stdout)["exports"]}

    def nbdsh(self, export, script):
        from nbd_helpers import NBDSH_ENV
        uri = f"nbd+unix:///{export}?socket={self.nbd_socket}"
        result = subprocess.run(["nbdsh", "-u", uri, "-c", script], capture_output=True,
                                text=True, timeout=60, env=NBDSH_ENV)
        assert result.returncode == 0, result.stderr
        return result.stdout


@contextlib.contextmanager
def running(config_path, *flags):
    daemon = Daemon(config_path, *flags).start()
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
