"""/proc/PID/status as a dict, for the privilege checks of the integration
tests and the package test (which runs without pytest)."""

CAP_NET_BIND_SERVICE = 1 << 10


def proc_status(pid, root=""):
    """{"Uid": [real, effective, saved, fs], "CapEff": ["0000...0400"], ...};
    root: a prefix for /proc, e.g. a container's PID 1's /proc/N/root."""
    out = {}
    with open("%s/proc/%d/status" % (root, pid)) as f:
        for line in f:
            key, _, val = line.partition(":")
            out[key] = val.split()
    return out
