"""The `rokfs` program: a command loads only what it uses, so the admin
commands work on a machine where pyfuse3 cannot be imported."""

import json
import os
import subprocess
import sys

NO_FUSE = ("import sys; sys.modules['pyfuse3'] = None\n"     # `import pyfuse3` now fails
           "from rokfs.cli import main; sys.exit(main(sys.argv[1:]))")
FRONT_ENDS = ("nbd_server.cli", "nbd_server.server", "rokfs.fusefs", "rokfs.fusefs.cli",
              "rokfs.daemon", "rokfs.remote.cli", "rokfs.rpc", "rokfs.metrics")


def rokfs_without_fuse(*args):
    proc = subprocess.run([sys.executable, "-c", NO_FUSE, *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, (args, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_admin_commands_work_without_pyfuse3(tmp_path):
    pool = str(tmp_path / "pool")
    assert "created pool" in rokfs_without_fuse("init", "--pool", pool, "--chunk-size", "64K")
    assert "created volume data (1M)" in rokfs_without_fuse(
        "create", "data", "--size", "1M", "--pool", pool)
    assert "created snapshot data@s1" in rokfs_without_fuse(
        "snapshot", "data@s1", "--label", "run=1", "--pool", pool)
    status = json.loads(rokfs_without_fuse("status", "--pool", pool, "-o", "json"))
    assert status["chunk_size"] == 64 << 10
    assert [v["name"] for v in status["volumes"]] == ["data"]
    assert [s["name"] for s in status["snapshots"]] == ["data@s1"]
    assert "volume data" in rokfs_without_fuse("status", "--pool", pool)
    assert "clean" in rokfs_without_fuse("fsck", pool)


def test_only_init_makes_a_pool_and_rm_deletes_offline(tmp_path):
    pool = str(tmp_path / "fresh")
    for command in (["status"], ["create", "v", "--size", "1M"], ["rm", "v"], ["fsck"]):
        args = [*command, pool] if command == ["fsck"] else [*command, "--pool", pool]
        proc = subprocess.run([sys.executable, "-m", "rokfs.cli", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and "no rokfs pool" in proc.stderr, (command, proc.stderr)
        assert not os.path.exists(pool)
    rokfs_without_fuse("init", "--pool", pool)
    rokfs_without_fuse("create", "v", "--size", "1M", "--pool", pool)
    rokfs_without_fuse("snapshot", "v@s", "--pool", pool)
    proc = subprocess.run([sys.executable, "-m", "rokfs.cli", "rm", "v", "--pool", pool],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 6 and "snapshots" in proc.stderr
    assert "deleted v@s" in rokfs_without_fuse("rm", "v@s", "--pool", pool)
    assert "deleted v" in rokfs_without_fuse("rm", "v", "--pool", pool)
    assert "volume v" not in rokfs_without_fuse("status", "--pool", pool)


def test_a_command_imports_no_other_front_end():
    code = ("import sys; from rokfs.cli import build_parser\n"
            "build_parser('fsck').parse_args(['fsck', '/nowhere'])\n"
            f"print([m for m in {FRONT_ENDS!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_daemon_without_a_mount_needs_no_pyfuse3():
    code = "import sys; sys.modules['pyfuse3'] = None; import rokfs.daemon"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_program_tells_its_version():
    from rokfs import __version__
    for module, prog in (("rokfs.cli", "rokfs"), ("rokfs.rokctl", "rokctl"),
                         ("csi_shim", "rokfs-csi")):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == f"{prog} {__version__}\n", proc.stderr


def test_rokfs_ends_quietly_on_a_closed_stdout(tmp_path):
    pool = str(tmp_path / "pool")
    rokfs_without_fuse("init", "--pool", pool)
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "rokfs.cli", "status", "--pool", pool],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""
