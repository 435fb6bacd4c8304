"""The server's default limits, in a module light enough for ``busai --help`` to import.

docs/serve.md states the memory bound they give.
"""

MAX_UPLOAD_MB = 10.0  # largest upload body (the file; multipart framing gets MULTIPART_OVERHEAD on top)
MULTIPART_OVERHEAD = 64 * 1024
MAX_MEGAPIXELS = 40.0  # far above any ultrasound frame; bounds the memory of the one request decoded at a time
MAX_QUEUE = 8  # uploads held at once (one running, the rest waiting); more are answered 503
RETRY_AFTER_S = 5  # the Retry-After of that 503
PIXEL_SPACING_MM = (0.001, 10.0)  # accepted pixel sizes; outside, mm figures would be meaningless or overflow
