-- Atomic batch of reads (see store/mod.rs, ReadOp). KEYS: every key read, one hash slot.
-- ARGV: per op `opcode, key_index, args...`. Each reply is wrapped in a table so that a nil
-- does not cut the reply array short: {} for nil, {value} otherwise, flat arrays as they come.
-- GETAT and HGETALLAT read a key whose name ends in what another read returns (`V key`: its
-- value, `F key field`: a hash field), in the same snapshot; KEYS holds the name's prefix.
-- HGETNAMED reads the field of a hash that another read names.
-- HGETALLOF reads the members of a sorted set in a range (its key's index, then the range as
-- ZRANGE takes it), each followed by the hash KEYS[index] .. member: {m1, {fields}, m2, …}.
local out = {}
local i = 1
local function name()
  local kind, k = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  i = i + 2
  if kind == 'V' then return redis.call('GET', k) end
  local field = ARGV[i]
  i = i + 1
  return redis.call('HGET', k, field)
end
-- The members of a score range (`min max rev offset count` next in ARGV), with their scores when
-- asked for.
local function range(key, withscores)
  local min, max, rev, offset, count = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local command, from, to = 'ZRANGEBYSCORE', min, max
  if rev == '1' then command, from, to = 'ZREVRANGEBYSCORE', max, min end
  if withscores then
    return redis.call(command, key, from, to, 'WITHSCORES', 'LIMIT', offset, count)
  end
  return redis.call(command, key, from, to, 'LIMIT', offset, count)
end
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  i = i + 2
  if op == 'GET' then
    local v = redis.call('GET', key)
    out[#out + 1] = v and { v } or {}
  elseif op == 'HGETALL' then
    out[#out + 1] = redis.call('HGETALL', key)
  elseif op == 'HGET' then
    local v = redis.call('HGET', key, ARGV[i])
    i = i + 1
    out[#out + 1] = v and { v } or {}
  elseif op == 'ZRANGE' then
    out[#out + 1] = range(key, 'WITHSCORES')
  elseif op == 'HGETALLOF' then
    local set = KEYS[tonumber(ARGV[i])]
    i = i + 1
    local docs = {}
    for _, member in ipairs(range(set)) do
      docs[#docs + 1] = member
      docs[#docs + 1] = redis.call('HGETALL', key .. member)
    end
    out[#out + 1] = docs
  elseif op == 'ZSCORE' then
    local v = redis.call('ZSCORE', key, ARGV[i])
    i = i + 1
    out[#out + 1] = v and { v } or {}
  elseif op == 'LRANGE' then
    out[#out + 1] = redis.call('LRANGE', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  elseif op == 'PTTL' then
    out[#out + 1] = { redis.call('PTTL', key) }
  elseif op == 'XRANGE' then
    local start = ARGV[i] == '' and '-' or '(' .. ARGV[i]
    out[#out + 1] = redis.call('XRANGE', key, start, '+', 'COUNT', ARGV[i + 1])
    i = i + 2
  elseif op == 'GETAT' then
    local n = name()
    local v = n and redis.call('GET', key .. n)
    out[#out + 1] = v and { v } or {}
  elseif op == 'HGETALLAT' then
    local n = name()
    out[#out + 1] = n and redis.call('HGETALL', key .. n) or {}
  elseif op == 'HGETNAMED' then
    local n = name()
    local v = n and redis.call('HGET', key, n)
    out[#out + 1] = v and { v } or {}
  else
    return redis.error_reply('BADOP unknown read op ' .. tostring(op))
  end
end
return out
