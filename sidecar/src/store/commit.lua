-- Atomic guarded commit (see store/mod.rs, Commit). KEYS: every key touched, one hash slot.
-- ARGV: n_guards, guards..., n_appends, appends..., then writes until the end.
-- Order matters: guards are checked first, then events are appended, then state is written.
-- An append that fails returns before any write, so state changes only if its event is recorded.
local i = 1
local function arg() local v = ARGV[i]; i = i + 1; return v end
local function key() return KEYS[tonumber(arg())] end

for _ = 1, tonumber(arg()) do
  local kind, k = arg(), key()
  if kind == 'EQ' then
    local present, expected = arg(), arg()
    local actual = redis.call('GET', k)
    if present == '1' then
      if actual ~= expected then return 'CONFLICT' end
    elseif actual then
      return 'CONFLICT'
    end
  elseif kind == 'STREAMBELOW' then
    local len = redis.pcall('XLEN', k)
    if type(len) == 'table' and len.err then
      return redis.error_reply('APPEND_FAILED ' .. len.err)
    end
    if len >= tonumber(arg()) then return 'OUTBOX_FULL' end
  else
    return redis.error_reply('BADOP unknown guard ' .. tostring(kind))
  end
end

for _ = 1, tonumber(arg()) do
  local k, maxlen, n = key(), arg(), tonumber(arg())
  local cmd = { 'XADD', k }
  if maxlen ~= '' then
    cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = maxlen
  end
  cmd[#cmd + 1] = '*'
  for _ = 1, 2 * n do cmd[#cmd + 1] = arg() end
  local ok = redis.pcall(unpack(cmd))
  if type(ok) == 'table' and ok.err then
    return redis.error_reply('APPEND_FAILED ' .. ok.err)
  end
end

while i <= #ARGV do
  local op, k = arg(), key()
  if op == 'SET' then
    redis.call('SET', k, arg())
  elseif op == 'SETPX' then
    local v = arg()
    redis.call('SET', k, v, 'PX', arg())
  elseif op == 'DEL' then
    redis.call('DEL', k)
  elseif op == 'HSET' then
    local cmd = { 'HSET', k }
    for _ = 1, 2 * tonumber(arg()) do cmd[#cmd + 1] = arg() end
    redis.call(unpack(cmd))
  elseif op == 'HDEL' then
    local cmd = { 'HDEL', k }
    for _ = 1, tonumber(arg()) do cmd[#cmd + 1] = arg() end
    redis.call(unpack(cmd))
  elseif op == 'ZADD' then
    local score = arg()
    redis.call('ZADD', k, score, arg())
  elseif op == 'ZREM' then
    redis.call('ZREM', k, arg())
  elseif op == 'ZREMBELOW' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', arg())
  elseif op == 'RPUSH' then
    redis.call('RPUSH', k, arg())
  elseif op == 'INCRWINDOW' then
    local ttl = arg()
    if redis.call('INCR', k) == 1 then redis.call('PEXPIRE', k, ttl) end
  elseif op == 'XDEL' then
    local cmd = { 'XDEL', k }
    for _ = 1, tonumber(arg()) do cmd[#cmd + 1] = arg() end
    redis.call(unpack(cmd))
  else
    return redis.error_reply('BADOP unknown write ' .. tostring(op))
  end
end
return 'OK'
