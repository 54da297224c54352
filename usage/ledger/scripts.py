"""The Redis ledger's Lua scripts: each operation one atomic round trip. Each touches the keys of
one shard only (`usage.ledger.keys`): those in KEYS and those it reads from the reservation hash
(its counters and its charged total), which lie in the same hash slot."""

_CHARGED_TTL = 400 * 86_400

# KEYS: reservation hash, deadlines zset, window keys..., counter keys...
# ARGV: amount, deadline, now, record json, counters json, window count,
#       prompt tokens, charge on expiry, charged key,
#       then per window: limit, amount, ttl, fit (1/0); then per counter: limit, ttl
RESERVE = """
local amount = tonumber(ARGV[1])
local w = tonumber(ARGV[6])
local n = #KEYS - 2 - w
local wbase = 9
local cbase = wbase + 4 * w
-- Sent again by a client whose connection broke before the answer: it is made already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local counts = {}
  for i = 1, w do counts[i] = tonumber(redis.call('GET', KEYS[2 + i]) or '0') end
  return {'ok', counts}
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + w + i]) == 0 then return {'init', i} end
end
local counts = {}
local refused = 0
for i = 1, w do
  local a = wbase + 4 * (i - 1)
  local limit, add, fit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 4] == '1'
  local k = KEYS[2 + i]
  if fit then
    counts[i] = tonumber(redis.call('GET', k) or '0')
    if refused == 0 and counts[i] + add > limit then refused = i end
  else
    counts[i] = redis.call('INCRBY', k, add)
    redis.call('EXPIRE', k, tonumber(ARGV[a + 3]), 'NX')
    if refused == 0 and counts[i] > limit then refused = i end
  end
end
if refused > 0 then return {'window', refused, counts} end
for i = 1, n do
  local k = KEYS[2 + w + i]
  local used = tonumber(redis.call('HGET', k, 'used') or '0')
  local reserved = tonumber(redis.call('HGET', k, 'reserved') or '0')
  if used + reserved + amount > tonumber(ARGV[cbase + 2 * i - 1]) then
    return {'refused', i, used, reserved, counts}
  end
end
for i = 1, w do
  local a = wbase + 4 * (i - 1)
  if ARGV[a + 4] == '1' then
    local k = KEYS[2 + i]
    counts[i] = redis.call('INCRBY', k, tonumber(ARGV[a + 2]))
    redis.call('EXPIRE', k, tonumber(ARGV[a + 3]), 'NX')
  end
end
for i = 1, n do
  local k = KEYS[2 + w + i]
  redis.call('HINCRBY', k, 'reserved', amount)
  redis.call('EXPIRE', k, tonumber(ARGV[cbase + 2 * i]))
end
redis.call('HSET', KEYS[1], 'amount', amount, 'record', ARGV[4], 'counters', ARGV[5],
  'prompt', ARGV[7], 'expiry_charge', ARGV[8], 'charged_key', ARGV[9])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), KEYS[1])
return {'ok', counts}
"""

# Shared by the scripts that charge: releases `release` reserved tokens and adds `tokens` (which
# a correction may make negative) to every counter and to the charged total; reports the soft
# thresholds crossed upwards.
_CHARGE = (
    f"local CHARGED_TTL = {_CHARGED_TTL}\n"
    """
local function charge(counters, release, tokens, events, organization_id, charged_key)
  local crossed = {}
  for _, c in ipairs(counters) do
    local key, threshold = c[1], tonumber(c[3])
    local before = tonumber(redis.call('HGET', key, 'used') or '0')
    if release ~= 0 then redis.call('HINCRBY', key, 'reserved', -release) end
    if tokens ~= 0 then redis.call('HINCRBY', key, 'used', tokens) end
    if tokens > 0 and before < threshold and before + tokens >= threshold then
      table.insert(crossed, c[4])
      redis.call('XADD', events, '*', 'e', cjson.encode({
        organization_id = organization_id, kind = 'threshold', budget = c[4],
        period = c[5], used = before + tokens, limit = tonumber(c[2])}))
    end
  end
  if charged_key and charged_key ~= '' and tokens ~= 0 then
    redis.call('INCRBY', charged_key, tokens)
    redis.call('EXPIRE', charged_key, CHARGED_TTL)
  end
  return crossed
end
"""
)

# KEYS: reservation hash, deadlines zset, records stream, events stream, tombstone
# ARGV: tokens, record update json
SETTLE = (
    _CHARGE
    + """
local tokens = tonumber(ARGV[1])
local amount = redis.call('HGET', KEYS[1], 'amount')
if amount then
  local h = redis.call('HMGET', KEYS[1], 'record', 'counters', 'charged_key')
  local record = cjson.decode(h[1])
  for k, v in pairs(cjson.decode(ARGV[2])) do record[k] = v end
  record.revision = 0
  local crossed = charge(cjson.decode(h[2]), tonumber(amount), tokens, KEYS[4],
    record.organization_id, h[3])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
  return {'settled', crossed}
end
local t = redis.call('HMGET', KEYS[5], 'charged', 'record', 'counters', 'charged_key')
if not t[1] then return false end
local record = cjson.decode(t[2])
for k, v in pairs(cjson.decode(ARGV[2])) do record[k] = v end
record.revision = 1
local crossed = charge(cjson.decode(t[3]), 0, tokens - tonumber(t[1]), KEYS[4],
  record.organization_id, t[4])
redis.call('DEL', KEYS[5])
redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
return {'corrected', crossed}
"""
)

# KEYS: reservation hash, deadlines zset, records stream, events stream, tombstone
# ARGV: now, tombstone ttl
EXPIRE = (
    _CHARGE
    + """
local deadline = redis.call('ZSCORE', KEYS[2], KEYS[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[1]) then return 0 end
local h = redis.call('HMGET', KEYS[1], 'amount', 'record', 'counters', 'charged_key', 'prompt', 'expiry_charge')
redis.call('ZREM', KEYS[2], KEYS[1])
if not h[1] then return 0 end
local amount = tonumber(h[1])
local charged = math.min(amount, tonumber(h[6] or h[1]))
local record = cjson.decode(h[2])
local prompt = math.min(tonumber(h[5] or '0'), charged)
charge(cjson.decode(h[3]), amount, charged, KEYS[4], record.organization_id, h[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[5], 'charged', charged, 'record', h[2], 'counters', h[3], 'charged_key', h[4] or '')
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[2]))
record.status = 'expired'
record.prompt_tokens = prompt
record.completion_tokens = charged - prompt
record.latency_ms = 0
record.revision = 0
redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
return 1
"""
)

# KEYS: reservation hash. ARGV: amount wanted, prompt tokens
GROW = """
local h = redis.call('HMGET', KEYS[1], 'amount', 'counters', 'expiry_charge')
if not h[1] then return {'gone'} end
local amount, want = tonumber(h[1]), tonumber(ARGV[1])
if want <= amount then return {'ok'} end
local extra = want - amount
local counters = cjson.decode(h[2])
for i, c in ipairs(counters) do
  local used = tonumber(redis.call('HGET', c[1], 'used') or '0')
  local reserved = tonumber(redis.call('HGET', c[1], 'reserved') or '0')
  if used + reserved + extra > tonumber(c[2]) then return {'refused', i, used, reserved} end
end
for _, c in ipairs(counters) do redis.call('HINCRBY', c[1], 'reserved', extra) end
redis.call('HSET', KEYS[1], 'amount', want, 'prompt', ARGV[2])
if tonumber(h[3] or h[1]) == amount then redis.call('HSET', KEYS[1], 'expiry_charge', want) end
return {'ok'}
"""

# KEYS: reservation hash, deadlines zset
CANCEL = """
local h = redis.call('HMGET', KEYS[1], 'amount', 'counters')
if not h[1] then return 0 end
for _, c in ipairs(cjson.decode(h[2])) do redis.call('HINCRBY', c[1], 'reserved', -tonumber(h[1])) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""

# KEYS: reservation hash, deadlines zset. ARGV: deadline, charge on expiry
ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'expiry_charge', ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), KEYS[1])
return 1
"""

BALANCES = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'used', 'reserved')
  table.insert(out, {v[1] or '-1', v[2] or '0'})
end
return out
"""
