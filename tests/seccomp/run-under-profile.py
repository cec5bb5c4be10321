#!/usr/bin/python3
"""Runs a command under a Docker seccomp profile the way Docker applies one to a container
started with its default capabilities, through the same libseccomp (Debian's python3-seccomp).
The tests' stand-in for `docker run --security-opt seccomp=PROFILE`, which needs an engine.

Usage: run-under-profile.py PROFILE [--without NAME,...] -- COMMAND [ARG...]

--without leaves those system calls out of every rule, so the profile without io_uring is the
policy of Docker's own default profile (which no longer allows io_uring).
"""
import json
import os
import platform
import sys

import seccomp

# The capabilities Docker gives a container unless told otherwise.
DOCKER_DEFAULT_CAPS = {
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}
DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
COMPARISONS = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def kernel_at_least(version):
    running = [int(part) for part in platform.release().split("-")[0].split(".")[:2]]
    return running >= [int(part) for part in version.split(".")[:2]]


def applies(rule):
    includes, excludes = rule.get("includes", {}), rule.get("excludes", {})
    if not set(includes.get("caps", [])) <= DOCKER_DEFAULT_CAPS:
        return False
    if "arches" in includes and DOCKER_ARCH not in includes["arches"]:
        return False
    if "minKernel" in includes and not kernel_at_least(includes["minKernel"]):
        return False
    if set(excludes.get("caps", [])) & DOCKER_DEFAULT_CAPS:
        return False
    return DOCKER_ARCH not in excludes.get("arches", [])


def action_of(rule, default_errno):
    if rule["action"] == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if rule["action"] == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet", default_errno))
    sys.exit(f"run-under-profile: unsupported action {rule['action']}")


def build_filter(profile, without):
    default_errno = profile.get("defaultErrnoRet", 1)
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        sys.exit(f"run-under-profile: unsupported defaultAction {profile['defaultAction']}")
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(default_errno))
    for rule in filter(applies, profile["syscalls"]):
        action = action_of(rule, default_errno)
        conditions = [
            seccomp.Arg(arg["index"], COMPARISONS[arg["op"]], arg["value"], arg.get("valueTwo", 0))
            for arg in rule.get("args", [])
        ]
        for name in rule["names"]:
            if name in without:
                continue
            try:
                number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            except ValueError:
                continue  # not a system call of this architecture: Docker skips it too
            syscall_filter.add_rule(action, number, *conditions)
    return syscall_filter


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    options, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    without = set()
    if len(options) == 3 and options[1] == "--without":
        without = set(options[2].split(","))
    elif len(options) != 1:
        sys.exit(__doc__)
    with open(options[0]) as file:
        profile = json.load(file)
    build_filter(profile, without).load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
