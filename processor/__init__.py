"""sendguard: stops compromised mailboxes from sending spam and viruses.

`processor.policy` is the pure lockout policy (standard library only); everything
else is wiring around it: Avro codecs, the Faust worker, operations, the local broker.
"""

__version__ = "0.1.0"
