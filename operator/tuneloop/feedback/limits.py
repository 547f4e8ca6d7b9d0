"""What one request may hold. Sizes of text are counted in UTF-8 bytes.

Kept apart from the service so that workload specs can share the page size without importing it.
"""

MAX_BODY_BYTES = 256 * 1024  # a whole POST body; 413 above it
MAX_TEXT_BYTES = 32 * 1024  # prompt, answer, correction and each message's content
MAX_MESSAGES = 64
MAX_NAME_CHARS = 200  # model, adapterVersion, idempotencyKey
MAX_LABEL_CHARS = 64
MAX_NAMESPACE_CHARS = 63  # a Kubernetes namespace name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A page also ends before its rows' text passes this: 1000 rows of the largest size would be 2 GB.
MAX_PAGE_BYTES = 8 * 1024 * 1024
