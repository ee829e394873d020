"""Fixes applied to Horovod 0.28.1's source tree before it is built (tools/bootstrap.sh).

    python tools/patch_horovod.py SOURCE_DIR     # apply every fix to an unpacked sdist
    python tools/patch_horovod.py --fingerprint  # a short hash of the fixes (the build's stamp)

Each fix names a file, the exact text it replaces (found exactly once, or the fix is refused) and
why. The fixes are bugs of the Gloo library Horovod bundles that elastic training runs into:
both turned a peer's death into a survivor's long stall or its abort.
"""
import hashlib
import json
import os
import sys

FIXES = [
    {
        "file": "third_party/gloo/gloo/transport/tcp/pair.cc",
        "why": (
            "A send that Gloo queued because its socket write failed (the peer had died or shut "
            "the connection down, EPIPE/ECONNRESET, which async mode does not report at once) "
            "was never failed when the pair then closed: Pair::signalException fails the queued "
            "sends of bound buffers only, not those of unbound buffers, which Horovod's "
            "collectives use. The sender then waited in UnboundBuffer::waitSend for the whole "
            "Gloo timeout (HOROVOD_GLOO_TIMEOUT_SECONDS) after a peer's death, and every other "
            "survivor waited for it in the next re-initialisation. The fix fails them too."),
        "old": (
            "  // Loop through posted send operations.\n"
            "  for (auto& op : tx_) {\n"
            "    if (op.buf != nullptr) {\n"
            "      op.buf->signalException(ex);\n"
            "    }\n"
            "  }\n"),
        "new": (
            "  // Loop through posted send operations.\n"
            "  for (auto& op : tx_) {\n"
            "    if (op.buf != nullptr) {\n"
            "      op.buf->signalException(ex);\n"
            "    }\n"
            "    // Sends of unbound buffers waiting in the queue fail too (gluon_elastic fix).\n"
            "    NonOwningPtr<UnboundBuffer> ubuf(op.ubuf);\n"
            "    if (ubuf) {\n"
            "      ubuf->signalException(ex);\n"
            "    }\n"
            "  }\n"),
    },
    {
        "file": "third_party/gloo/gloo/transport/tcp/pair.cc",
        "why": (
            "After a peer's death the survivors do not all see the failure at the same moment, "
            "and one that went on can send a message that does not fit the receive its peer "
            "posted (seen: 8 bytes for a 4-byte receive). Gloo checked that with an assertion in "
            "its network thread, so the receiving survivor aborted (std::terminate, exit 134) "
            "instead of failing its collective, and the job went on one worker short. The fix "
            "fails the receive and the pair, as a broken connection does: the survivor resets "
            "with the others."),
        "old": (
            "    // Bytes read must be in bounds for target buffer\n"
            "    GLOO_ENFORCE_LE(op.preamble.length, op.nbytes);\n"
            "    return iov.iov_len;\n"),
        "new": (
            "    // Bytes read must be in bounds for target buffer. A message that does not fit\n"
            "    // fails the receive and the pair rather than the process (gluon_elastic fix).\n"
            "    if (op.preamble.length > op.nbytes) {\n"
            "      auto ex = std::make_exception_ptr(::gloo::IoException(GLOO_ERROR_MSG(\n"
            "          \"Message of \", op.preamble.length, \" bytes for a receive of \",\n"
            "          op.nbytes, \" bytes from \", peer_.str())));\n"
            "      buf->signalException(ex);\n"
            "      signalException(ex);\n"
            "      return -1;\n"
            "    }\n"
            "    return iov.iov_len;\n"),
    },
]


def fingerprint():
    """A short hash of :data:`FIXES`: a build made with other fixes is rebuilt."""
    return hashlib.sha256(json.dumps(FIXES, sort_keys=True).encode()).hexdigest()[:16]


def apply(source_dir):
    """Apply every fix to the Horovod source tree ``source_dir``; raise if one does not fit."""
    for fix in FIXES:
        path = os.path.join(source_dir, fix["file"])
        with open(path) as fin:
            text = fin.read()
        count = text.count(fix["old"])
        if count != 1:
            raise SystemExit("patch_horovod: the text to replace occurs %d times in %s (expected "
                             "once): not the Horovod source this fix was written for"
                             % (count, fix["file"]))
        with open(path, "w") as fout:
            fout.write(text.replace(fix["old"], fix["new"]))
        print("patch_horovod: fixed %s" % fix["file"], file=sys.stderr)


def main(argv):
    if argv == ["--fingerprint"]:
        print(fingerprint())
    elif len(argv) == 1:
        apply(argv[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
