"""A descriptor pool of our own.

Our messages live in package ``inference`` for wire compatibility, as do tritonclient's; in the
default pool the two would collide in any process that imports both (a test, a client beside an
embedded server), so the generated modules register here instead.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
