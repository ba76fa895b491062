"""`make audit`: pip-audit over the installed dependencies, or one line saying plainly why it cannot run here.

pip-audit asks PyPI's JSON API (`/pypi/<name>/<version>/json`) for each package's known vulnerabilities.
Where that API cannot be reached, or a mirror answers without it, pip-audit would report every package as
"not found" and still print "No known vulnerabilities found": a pass that checked nothing. So the service
is probed first; unreachable is reported as skipped (exit 0), while a real vulnerability, or a package
that could not be audited while the service answers, fails (pip-audit --strict).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import urllib.error
import urllib.request

PROBE = "https://pypi.org/pypi/pip/{version}/json"
TIMEOUT_SECONDS = 15


def unreachable_reason() -> str | None:
    """Why the vulnerability service cannot be used from here; None when it answers as pip-audit needs."""
    url = PROBE.format(version=importlib.metadata.version("pip"))
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as reply:  # noqa: S310 - a fixed https URL
            document = json.load(reply)
    except urllib.error.HTTPError as error:
        return f"{url} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url} is unreachable ({getattr(error, 'reason', error)})"
    except ValueError:
        return f"{url} did not answer JSON"
    if not isinstance(document, dict) or "vulnerabilities" not in document:
        return f"{url} answered without the vulnerabilities field pip-audit reads"
    return None


def main() -> int:
    reason = unreachable_reason()
    if reason is not None:
        print(f"pip-audit skipped: PyPI's vulnerability service cannot be used from this machine: {reason}")
        return 0
    command = [sys.executable, "-m", "pip_audit", "--strict", "--local", "--skip-editable", "--progress-spinner", "off"]
    print("pip-audit:", " ".join(command[2:]), flush=True)
    return subprocess.call(command)  # noqa: S603 - a fixed command line


if __name__ == "__main__":
    sys.exit(main())
