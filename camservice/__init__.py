"""camservice: a multi-process camera service for Linux.

The package holds what every process shares (protocol, errors, configuration,
logging, ffmpeg location) plus the supervisor and the command-line interface.
The process roles live in the sibling packages ``gateway`` and ``workers``.
"""

__version__ = "0.1.0"
