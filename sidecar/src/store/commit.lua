-- Atomic guarded commit (store/mod.rs, Commit; encoded by store/script_args.rs).
-- KEYS: every key touched, one hash slot.
-- ARGV[1]: the program, one instruction per guard, append and write, in that order: an opcode
--   byte, the key's index in KEYS (2 bytes, big-endian), and for HSET, HDEL, XDEL and XADD a
--   count (2 bytes: fields, or field-value pairs).
-- ARGV[2..]: the operands of the instructions (values, fields, scores, limits), in order.
-- Guards are checked first, then events are appended, then state is written. An append that
-- fails returns before any write, so state changes only if its event is recorded.
-- Returns OK; or, when a write reports something, {the length of the list the last
-- RPUSH_NUMBERED left (-1: none), the fields READ_BACK found (empty: none)}; CONFLICT or
-- OUTBOX_FULL when a guard fails.
-- Why a byte program: a create is about a hundred arguments, and Redis turns each into a Lua
-- string; op names, key indexes and counts as separate arguments, each walked through a
-- function call and `tonumber`, were a fifth of a create's instructions (callgrind of Redis).
-- Operands go to redis.call as ranges of ARGV (unpack(ARGV, i, j)), never copied into a table.
local ARGV, KEYS, tonumber, unpack, type = ARGV, KEYS, tonumber, unpack, type
local call, pcall, byte = redis.call, redis.pcall, string.byte
local program = ARGV[1]

local EQ, EQ_NONE, HEQ, HEQ_NONE = byte('E'), byte('e'), byte('H'), byte('h')
local INT_BELOW, ZCOUNT_BELOW, HINT_ABOVE, STREAM_BELOW = byte('I'), byte('C'), byte('G'), byte('L')
local XADD, XADD_TRIM = byte('a'), byte('A')
local SET, SETPX, DEL, HSET, HDEL = byte('s'), byte('p'), byte('d'), byte('w'), byte('x')
local ZADD, ZREM, ZREM_BELOW, RPUSH_NUMBERED = byte('z'), byte('r'), byte('b'), byte('R')
local INCR, INCR_WINDOW, HINCRBY, XDEL, READ_BACK = byte('+'), byte('i'), byte('n'), byte('X'), byte('B')

local function failed_append(reply)
  return type(reply) == 'table' and reply.err
end

local pc, a = 1, 2 -- the next byte of the program, the next operand in ARGV
local list_len, read_back -- what the last RPUSH_NUMBERED left, what READ_BACK found
-- The count following an opcode and its key.
local function count()
  local n1, n2 = byte(program, pc, pc + 1)
  pc = pc + 2
  return n1 * 256 + n2
end

local len = #program
while pc <= len do
  local op, k1, k2 = byte(program, pc, pc + 2)
  local k = KEYS[k1 * 256 + k2]
  pc = pc + 3

  if op == EQ then
    if call('GET', k) ~= ARGV[a] then return 'CONFLICT' end
    a = a + 1
  elseif op == EQ_NONE then
    if call('GET', k) then return 'CONFLICT' end
  elseif op == HEQ then
    if call('HGET', k, ARGV[a]) ~= ARGV[a + 1] then return 'CONFLICT' end
    a = a + 2
  elseif op == HEQ_NONE then
    if call('HGET', k, ARGV[a]) then return 'CONFLICT' end
    a = a + 1
  elseif op == INT_BELOW then
    if (tonumber(call('GET', k)) or 0) >= tonumber(ARGV[a]) then return 'CONFLICT' end
    a = a + 1
  elseif op == ZCOUNT_BELOW then
    if call('ZCOUNT', k, '(' .. ARGV[a], '+inf') >= tonumber(ARGV[a + 1]) then
      return 'CONFLICT'
    end
    a = a + 2
  elseif op == HINT_ABOVE then
    local value = tonumber(call('HGET', k, ARGV[a]))
    if not value or value <= tonumber(ARGV[a + 1]) then return 'CONFLICT' end
    a = a + 2
  elseif op == STREAM_BELOW then
    local length = pcall('XLEN', k)
    if failed_append(length) then return redis.error_reply('APPEND_FAILED ' .. length.err) end
    if length >= tonumber(ARGV[a]) then return 'OUTBOX_FULL' end
    a = a + 1

  elseif op == XADD or op == XADD_TRIM then
    local n, reply = count(), nil
    if op == XADD_TRIM then
      reply = pcall('XADD', k, 'MAXLEN', '~', ARGV[a], '*', unpack(ARGV, a + 1, a + 2 * n))
      a = a + 1
    else
      reply = pcall('XADD', k, '*', unpack(ARGV, a, a + 2 * n - 1))
    end
    if failed_append(reply) then return redis.error_reply('APPEND_FAILED ' .. reply.err) end
    a = a + 2 * n

  elseif op == SET then
    call('SET', k, ARGV[a])
    a = a + 1
  elseif op == SETPX then
    call('SET', k, ARGV[a], 'PX', ARGV[a + 1])
    a = a + 2
  elseif op == DEL then
    call('DEL', k)
  elseif op == HSET then
    local n = count()
    call('HSET', k, unpack(ARGV, a, a + 2 * n - 1))
    a = a + 2 * n
  elseif op == HDEL then
    local n = count()
    call('HDEL', k, unpack(ARGV, a, a + n - 1))
    a = a + n
  elseif op == ZADD then
    call('ZADD', k, ARGV[a], ARGV[a + 1])
    a = a + 2
  elseif op == ZREM then
    call('ZREM', k, ARGV[a])
    a = a + 1
  elseif op == ZREM_BELOW then
    call('ZREMRANGEBYSCORE', k, '-inf', ARGV[a])
    a = a + 1
  elseif op == RPUSH_NUMBERED then
    list_len = call('LLEN', k) + 1
    call('RPUSH', k, ARGV[a] .. list_len .. ARGV[a + 1])
    a = a + 2
  elseif op == INCR then
    call('INCR', k)
  elseif op == INCR_WINDOW then
    if call('INCR', k) == 1 then call('PEXPIRE', k, ARGV[a]) end
    a = a + 1
  elseif op == HINCRBY then
    -- Saturating: Redis refuses a sum beyond 64 bits, and then changes nothing.
    local reply = pcall('HINCRBY', k, ARGV[a], ARGV[a + 1])
    if type(reply) == 'table' and reply.err then
      if not reply.err:find('overflow') then return reply end
      call('HSET', k, ARGV[a], '9223372036854775807')
    end
    a = a + 2
  elseif op == XDEL then
    local n = count()
    call('XDEL', k, unpack(ARGV, a, a + n - 1))
    a = a + n
  elseif op == READ_BACK then
    read_back = call('HGETALL', k)
  else
    return redis.error_reply('BADOP unknown opcode ' .. tostring(op))
  end
end
if list_len or read_back then return { list_len or -1, read_back or {} } end
return 'OK'
