"""A real RTSP server for tests/sdk/test_network_streams.py: GStreamer's RTSP server (gst-rtsp-server) on the loopback.

Run by Debian's Python, whose python3-gi binds GStreamer (the project's venv has no PyGObject)::

    /usr/bin/python3 tests/sdk/rtsp_server.py CLIP PORT MOUNT [USER:PASSWORD]   # serve
    /usr/bin/python3 tests/sdk/rtsp_server.py --check           # exit 0 if everything it needs is installed

serves the Motion-JPEG AVI ``CLIP`` at ``rtsp://127.0.0.1:PORT/MOUNT`` (PORT 0: any free port) as RTP/JPEG at the
clip's frame rate: the server's sinks play on the clock, like a live camera. Each client gets its own pipeline from
the clip's first frame. Prints ``ready PORT`` once it listens; another path is answered 404 Not Found by the server.
With ``USER:PASSWORD`` the stream needs those credentials (HTTP Basic, as many cameras): 401 Unauthorized without.
The frames are decoded and encoded again by GStreamer's libjpeg: RTP/JPEG (RFC 2435) carries no Huffman tables, so
the player assumes the standard ones, and OpenCV's MJPEG encoder does not use them.

Packages (Debian 12): gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base python3-gi;
the Makefile's ``rtsp-server`` target installs them.
"""

import sys

ELEMENTS = ("filesrc", "avidemux", "jpegdec", "videoconvert", "jpegenc", "rtpjpegpay")


def missing() -> str | None:
    """What is not installed, in words; None when the server can run."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as err:
        return f"GStreamer's RTSP server for Python: {err}"
    Gst.init(None)
    absent = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    return f"GStreamer elements {', '.join(absent)}" if absent else None


def serve(clip: str, port: int, mount: str, credentials: str | None) -> int:
    from gi.repository import GLib, GstRtspServer

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! avidemux ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! '
        "jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(False)
    if credentials:
        user, _, password = credentials.partition(":")
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth = GstRtspServer.RTSPAuth()
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        for permission in (
            GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS,
            GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT,
        ):
            permissions.add_permission_for_role("viewer", permission, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


def main(argv: list[str]) -> int:
    problem = missing()
    if argv == ["--check"] or problem:
        if problem:
            print(f"not installed: {problem}", file=sys.stderr)
        return 1 if problem else 0
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    return serve(argv[0], int(argv[1]), argv[2], argv[3] if len(argv) == 4 else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
