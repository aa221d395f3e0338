"""Lua scripts that make a check-then-change on Redis one atomic step.

Each one exists because the two-command version could only promise "at least once" (or
lose work) when a reply is lost and the call retried, when a process dies between the
commands, or when two processes act on the same entry: Redis runs a script with nothing
in between. Every key a script touches is passed in KEYS, so in a cluster they must
share a slot (the configuration checks that for a shard and its DLQ).
"""

from __future__ import annotations

from typing import Final

# KEYS: stream, dlq. ARGV: group, then per entry: its id, "1" when it must still be
# pending in the group to be lettered (else "0"), the number n of field items that
# follow, and the n items (name, value, ...). Returns the ids lettered.
#
# "Still pending" is what gives each entry one letter: a second router holding the same
# entry (claimed by a survivor while Redis was down) or a retry after a lost reply finds
# it acked and adds nothing. An id that XAUTOCLAIM reported deleted is no longer pending
# (Redis 7 drops it from the PEL as it reports it, to that one caller only), so it is
# lettered without the check.
DEAD_LETTER: Final = """
local stream, dlq, group = KEYS[1], KEYS[2], ARGV[1]
local lettered = {}
local i = 2
while i <= #ARGV do
  local id, check, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if check == '0' or #redis.call('XPENDING', stream, group, id, id, 1) > 0 then
    local add = {'XADD', dlq, '*'}
    for j = 1, n do add[j + 3] = ARGV[i + 2 + j] end
    redis.call(unpack(add))
    redis.call('XACK', stream, group, id)
    lettered[#lettered + 1] = id
  end
  i = i + 3 + n
end
return lettered
"""

# KEYS: dlq, target stream. ARGV: the DLQ entry id, then the fields to publish (name,
# value, ...). Returns the new entry's id, or false when the entry is no longer in the
# DLQ (replayed or purged meanwhile, or by this call's first try whose reply was lost).
REPLAY_LETTER: Final = """
local dlq, target, id = KEYS[1], KEYS[2], ARGV[1]
if #redis.call('XRANGE', dlq, id, id) == 0 then return false end
local add = {'XADD', target, '*'}
for j = 2, #ARGV do add[j + 2] = ARGV[j] end
local new_id = redis.call(unpack(add))
redis.call('XDEL', dlq, id)
return new_id
"""

# KEYS: stream. ARGV: group, consumer. Returns 1 when the consumer owned nothing and was
# deleted. DELCONSUMER drops a consumer's pending entries with it, so "owns nothing" must
# be checked in the same step: a check a moment earlier would lose whatever a consumer
# that is alive after all read in between.
DELETE_CONSUMER_IF_IDLE: Final = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
