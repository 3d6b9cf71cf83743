"""fastq — lock-free shared-memory queues for Python processes.

>>> import fastq
>>> with fastq.Queue() as q:
...     q.put("hello")
...     q.get()
'hello'
"""
from queue import Empty, Full

from ._core import CorruptQueueError, CorruptRecordError, DedupTableFullError, FastqError, IncompatibleQueueError
from .log import Backoff, Consumer, DeadLetter, Group, Log, Message, Record, Retention, open
from .queue import JoinableQueue, Queue, unlink

__version__ = "0.1.0"
__all__ = ["Queue", "JoinableQueue", "open", "Log", "Group", "Consumer", "Message", "Backoff", "DeadLetter",
           "unlink", "Empty", "Full", "FastqError", "CorruptQueueError", "CorruptRecordError", "IncompatibleQueueError",
           "DedupTableFullError", "Retention", "Record", "__version__"]
