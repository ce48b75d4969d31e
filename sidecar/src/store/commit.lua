-- Atomic guarded commit (store/mod.rs, Commit; encoded by store/script_args.rs).
-- KEYS: every key touched, one hash slot.
-- ARGV[1]: the program, one instruction per guard, append and write, in that order: an opcode
--   byte, the key's index in KEYS (2 bytes, big-endian), and for HSET, HDEL, XDEL, XADD and
--   XADD_SESSION(_AT) a count (2 bytes: fields, or field-value pairs); the *_AT instructions
--   (the key is KEYS[index] .. what another key holds), SET_NAMED (the value is what another
--   key holds) and XADD_SESSION (the payload is a session document) then give that other
--   key's index in KEYS (2 bytes); HDEL_IF_AT (its field too is what another key holds) and
--   XADD_SESSION_AT (the document is KEYS[that index] .. what a third key holds) then a second
--   one; what that other key holds is its value, or the hash field that is the first operand
--   (empty: the value); index 0 names the session PICK_OLDEST picked (nothing when none).
--   HPUT_AT then gives a count of field-value pairs, PICK_OLDEST the index of its second key,
--   TITLE_FREE(_AT) the index of the prefix of session documents (after the naming key's).
--   EXPLAIN(_AT) comes first, then the guards. MERGED_WITHIN and MERGE_JSON act on what their
--   key holds, alike.
-- ARGV[2..]: the operands of the instructions (values, fields, scores, limits), in order.
-- Guards are checked first, then events are appended, then state is written. An append that
-- fails returns before any write, so state changes only if its event is recorded. An append
-- among the writes (XADD_SESSION, or XADD after the end of a session the commit picked) cannot
-- fail there: the commit's STREAM_BELOW guard on the same stream has proven its type, and a
-- script that has written may go on writing at Redis's memory limit.
-- Returns OK; or, when a write reports something, {the length of the list the last
-- RPUSH_NUMBERED left (-1: none), the fields READ_BACK found (empty: none), the session the
-- last XADD_SESSION carried (empty: none), what each REPORT and REPORT_PICKED found (a list),
-- the object the last MERGE_JSON wrote (empty: none)}; {CONFLICT, the fields of the hash
-- EXPLAIN or EXPLAIN_AT named (empty: none), the position of the guard that failed among the
-- guards (from 0), what it measured (an INT_BELOW its counter's PTTL, a MERGED_WITHIN the merged
-- size; absent otherwise)}, or OUTBOX_FULL, when a guard fails.
-- Why a byte program: a create is about a hundred arguments, and Redis turns each into a Lua
-- string; op names, key indexes and counts as separate arguments, each walked through a
-- function call and `tonumber`, were a fifth of a create's instructions (callgrind of Redis).
-- Operands go to redis.call as ranges of ARGV (unpack(ARGV, i, j)), never copied into a table.
local ARGV, KEYS, tonumber, unpack, type = ARGV, KEYS, tonumber, unpack, type
local call, pcall, byte = redis.call, redis.pcall, string.byte
local program = ARGV[1]

-- The opcodes, as numbers (their letters after them): this top level runs on every call.
local EQ, EQ_NONE, HEQ, HEQ_NONE = 69, 101, 72, 104 -- E e H h
local INT_BELOW, ZCOUNT_BELOW, HINT_ABOVE, STREAM_BELOW = 73, 67, 71, 76 -- I C G L
local XADD, XADD_TRIM = 97, 65 -- a A
local SET, SETPX, DEL, HSET, HDEL = 115, 112, 100, 119, 120 -- s p d w x
local ZADD, ZREM, ZREM_BELOW, RPUSH_NUMBERED = 122, 114, 98, 82 -- z r b R
local INCR, INCR_WINDOW, HINCRBY, XDEL, READ_BACK = 43, 105, 110, 88, 66 -- + i n X B
local ZADD_AT, ZREM_AT, INCR_AT, HSET_AT, HINCRBY_AT = 90, 81, 74, 87, 78 -- Z Q J W N
local XADD_SESSION, REPORT, HDEL_IF_AT = 86, 80, 84 -- V P T
local MERGED_WITHIN, MERGE_JSON, HPUT_AT = 77, 109, 79 -- M m O
local TITLE_FREE, TITLE_FREE_AT = 70, 102 -- F f
local HEQ_AT, HINT_ABOVE_AT, READ_BACK_AT, SET_NAMED = 75, 103, 107, 83 -- K g k S
local XADD_SESSION_AT, PICK_OLDEST, ZADD_PICKED, ZREM_PICKED = 118, 111, 121, 89 -- v o y Y
local REPORT_PICKED, EXPLAIN, EXPLAIN_AT, EACH_PICKED = 113, 33, 63, 42 -- q ! ? *

-- Writes the API form of a session document as JSON (model/session.rs, Record::view): the
-- payload of the event of a change made without reading the session. A test holds the two to
-- each other over random documents. Made by the one instruction that needs it, as the script's
-- top level runs on every call.
local function session_view_writer()
  local encode, floor, format, concat = cjson.encode, math.floor, string.format, table.concat
  local ROLE_COUNTS = { 'n_user', 'n_assistant', 'n_system', 'n_tool' }

  -- RFC 3339 UTC with milliseconds, from milliseconds since the epoch. Written out without
  -- string.format, and each day's date once (civil date from days: Howard Hinnant's algorithm).
  local dates = {}
  local function two(n) return n < 10 and '0' .. n or '' .. n end
  local function timestamp(ms)
    ms = tonumber(ms)
    local secs = floor(ms / 1000)
    local days = floor(secs / 86400)
    local date = dates[days]
    if not date then
      local era = floor((days + 719468) / 146097)
      local doe = days + 719468 - era * 146097
      local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
      local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
      local mp = floor((5 * doy + 2) / 153)
      local month = mp < 10 and mp + 3 or mp - 9
      local year = yoe + era * 400 + (month <= 2 and 1 or 0)
      date = format('%04d-%02d-', year, month) .. two(doy - floor((153 * mp + 2) / 5) + 1)
      dates[days] = date
    end
    local sod, milli = secs - days * 86400, ms - secs * 1000
    return '"' .. date .. 'T' .. two(floor(sod / 3600)) .. ':' .. two(floor(sod % 3600 / 60))
      .. ':' .. two(sod % 60) .. '.' .. (milli < 10 and '00' or milli < 100 and '0' or '')
      .. milli .. 'Z"'
  end

  -- Micro-units as a decimal amount, in the fewest digits that read back as the same double
  -- (what Rust writes): the exact digits while a double holds them all.
  local function amount(micros)
    if #micros > 15 then
      local value = tonumber(micros) / 1e6
      for digits = 15, 17 do
        local text = format('%.' .. digits .. 'g', value)
        if tonumber(text) == value then
          return text:find('[.e]') and text or text .. '.0' -- a float, as Rust writes it
        end
      end
    end
    local digits = string.rep('0', 7 - #micros) .. micros
    local fraction = digits:sub(-6):gsub('0+$', '')
    return digits:sub(1, -7) .. '.' .. (fraction == '' and '0' or fraction)
  end

  -- Written as pieces joined once: each concatenation would make a string of its own.
  return function(fields)
    local doc = {}
    for i = 1, #fields, 2 do doc[fields[i]] = fields[i + 1] end
    local out, n = {}, 0
    local function put(name, json) out[n + 1], out[n + 2], n = name, json, n + 2 end
    local function text(name, field) if doc[field] then put(name, encode(doc[field])) end end
    put('{"session_id":', encode(doc.session_id))
    put(',"user_id":', encode(doc.user_id))
    text(',"org_id":', 'org_id'); text(',"title":', 'title'); text(',"case_id":', 'case_id')
    put(',"status":', encode(doc.status))
    put(',"current":', doc.current == '1' and 'true' or 'false')
    put(',"metadata":', doc.metadata); put(',"data":', doc.data)
    put(',"created_at":', timestamp(doc.created_ms))
    put(',"updated_at":', timestamp(doc.updated_ms))
    put(',"expires_at":', timestamp(doc.expires_ms))
    if doc.ended_ms then put(',"ended_at":', timestamp(doc.ended_ms)) end
    text(',"end_reason":', 'end_reason'); text(',"performer_id":', 'performer_id')
    put(',"version":', doc.version)
    local messages = 0
    for _, field in ipairs(ROLE_COUNTS) do messages = messages + (tonumber(doc[field]) or 0) end
    put(',"message_count":', format('%.0f', messages))
    put(',"total_tokens":', doc.tokens_total or '0')
    put(',"total_cost":', amount(doc.cost_micros or '0'))
    put('}', '')
    return concat(out)
  end
end

-- An RFC 7386 merge patch of one JSON object by another, on their text, as the engine writes
-- it (`merge` in sessions/lifecycle.rs: json_patch::merge, then serde_json): compact, members in
-- the byte order of their keys, every other value kept as its text (numbers exactly). Both
-- texts come from serde_json, so they are compact with members in that order, and one key is
-- always escaped alike. A test holds the two to each other. Made by the instructions that
-- need it, as session_view_writer is.
local function json_merger()
  local find, sub, concat, decode, min = string.find, string.sub, table.concat, cjson.decode, math.min

  -- Where the value that starts at i ends.
  local function value_end(text, i)
    local c = byte(text, i)
    if c == 34 then -- a string: to the quote no backslash escapes
      local j = i + 1
      while true do
        local q = find(text, '["\\]', j)
        if byte(text, q) == 34 then return q end
        j = q + 2
      end
    elseif c == 123 or c == 91 then -- an object or an array: to the bracket that closes it
      local depth, j = 0, i
      while true do
        local q = find(text, '[][{}"]', j)
        local d = byte(text, q)
        if d == 34 then
          j = value_end(text, q) + 1
        else
          depth = depth + ((d == 123 or d == 91) and 1 or -1)
          if depth == 0 then return q end
          j = q + 1
        end
      end
    end
    return (find(text, '[,}%]]', i) or #text + 1) - 1 -- a number, true, false or null
  end

  -- An object's members: {key as written, value as written}, in order.
  local function members(text)
    local list, i = {}, 2
    if byte(text, 2) == 125 then return list end
    while true do
      local key_end = value_end(text, i)
      local value_start = key_end + 2
      local e = value_end(text, value_start)
      list[#list + 1] = { sub(text, i, key_end), sub(text, value_start, e) }
      if byte(text, e + 1) == 125 then return list end
      i = e + 2
    end
  end

  local function name(key)
    if find(key, '\\', 1, true) then return decode(key) end
    return sub(key, 2, -2)
  end

  -- Byte order, as Rust orders strings (Lua's `<` follows the locale).
  local function before(a, b)
    for i = 1, min(#a, #b) do
      local x, y = byte(a, i), byte(b, i)
      if x ~= y then return x < y end
    end
    return #a < #b
  end

  local merge
  merge = function(target, patch)
    if byte(patch, 1) ~= 123 then return patch end
    local t = (target and byte(target, 1) == 123) and members(target) or {}
    local p = members(patch)
    local out, i, j = {}, 1, 1
    while t[i] or p[j] do
      local tm, pm = t[i], p[j]
      local same = tm and pm and tm[1] == pm[1]
      if not pm or (tm and not same and before(name(tm[1]), name(pm[1]))) then
        out[#out + 1] = tm[1] .. ':' .. tm[2]
        i = i + 1
      else
        if pm[2] ~= 'null' then
          out[#out + 1] = pm[1] .. ':' .. merge(same and tm[2] or nil, pm[2])
        end
        if same then i = i + 1 end
        j = j + 1
      end
    end
    return '{' .. concat(out, ',') .. '}'
  end
  return merge
end

local function failed_append(reply)
  return type(reply) == 'table' and reply.err
end

local picked -- the session PICK_OLDEST chose to end, if any (in an EACH_PICKED block: in turn)
local pickeds -- every session PICK_OLDEST chose, oldest first
-- An EACH_PICKED block: its length in instructions, those left of this round, where it starts
-- (the program and the operands) and which session picked it runs for.
local block_ops, block_left, block_pc, block_a, picked_i
-- What another key holds: a field of a hash, or (field empty) a string's value; false for
-- none. No key (KEYS[0], the index that names it) names the session picked.
local function named(key, field)
  if not key then return picked end
  if field == '' then return call('GET', key) end
  return call('HGET', key, field)
end

local pc, a = 1, 2 -- the next byte of the program, the next operand in ARGV
-- A guard failed (the loop stops); EXPLAIN names the hash whose fields the refusal reports.
-- Guards come first in the program (after EXPLAIN): the refusal names the one that failed by its
-- position among them, and what it measured: a failed INT_BELOW its counter's PTTL (a rate
-- window), a failed MERGED_WITHIN the size of the merged object.
local refused, explain, measured
local ops, first_guard = 0, 1
-- What the last RPUSH_NUMBERED left, READ_BACK found, XADD_SESSION carried, MERGE_JSON
-- wrote; what each REPORT and REPORT_PICKED found.
local list_len, read_back, session, reported, merged
local merge_json -- json_merger(), once made
-- The merges MERGED_WITHIN made, {patch, result} by key and field: the MERGE_JSON after it of
-- the same patch there (nothing between them writes there) writes it without merging again.
local merges = {}
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

  ops = ops + 1
  if op == EXPLAIN then
    explain, first_guard = k, 2
  elseif op == EXPLAIN_AT then
    local name = named(KEYS[count()], ARGV[a])
    explain, first_guard = name and k .. name, 2
    a = a + 1
  elseif op == EQ then
    if call('GET', k) ~= ARGV[a] then refused = true; break end
    a = a + 1
  elseif op == EQ_NONE then
    if call('GET', k) then refused = true; break end
  elseif op == HEQ then
    if call('HGET', k, ARGV[a]) ~= ARGV[a + 1] then refused = true; break end
    a = a + 2
  elseif op == HEQ_NONE then
    if call('HGET', k, ARGV[a]) then refused = true; break end
    a = a + 1
  elseif op == INT_BELOW then
    if (tonumber(call('GET', k)) or 0) >= tonumber(ARGV[a]) then
      refused, measured = true, call('PTTL', k)
      break
    end
    a = a + 1
  elseif op == ZCOUNT_BELOW then
    if call('ZCOUNT', k, '(' .. ARGV[a], '+inf') >= tonumber(ARGV[a + 1]) then
      refused = true; break
    end
    a = a + 2
  elseif op == HINT_ABOVE then
    local value = tonumber(call('HGET', k, ARGV[a]))
    if not value or value <= tonumber(ARGV[a + 1]) then refused = true; break end
    a = a + 2
  elseif op == MERGED_WITHIN then
    -- Also refused where something else than an object is held: decided on a read (corrupt).
    local held = named(k, ARGV[a]) or '{}'
    if byte(held, 1) ~= 123 then refused = true; break end
    merge_json = merge_json or json_merger()
    local result = merge_json(held, ARGV[a + 1])
    if #result > tonumber(ARGV[a + 2]) then
      refused, measured = true, #result
      break
    end
    merges[k .. '\0' .. ARGV[a]] = { ARGV[a + 1], result }
    a = a + 3
  elseif op == TITLE_FREE or op == TITLE_FREE_AT then
    -- The title is free in the user's title index (k, or k .. what the naming key holds, which
    -- must be there), or held by the session excepted (the operand after the time; empty:
    -- none), or by a session (named under the next key) that is gone, expired or past its
    -- expiry: a snapshot's `is_live`.
    local index = k
    if op == TITLE_FREE_AT then
      local name = named(KEYS[count()], ARGV[a])
      index = name and k .. name
      a = a + 1
    end
    local sessions = KEYS[count()]
    if not index then refused = true; break end
    local holder = call('HGET', index, ARGV[a])
    if holder and holder ~= ARGV[a + 2] then
      local doc = sessions .. holder
      local status = call('HGET', doc, 'status')
      local expires = tonumber(call('HGET', doc, 'expires_ms')) or 0
      if status and status ~= 'expired' and expires > tonumber(ARGV[a + 1]) then
        refused = true; break
      end
    end
    a = a + 3
  elseif op == HEQ_AT or op == HINT_ABOVE_AT then
    -- The hash k .. what the naming key holds must be there by name, its field as HEQ or
    -- HINT_ABOVE requires.
    local name = named(KEYS[count()], ARGV[a])
    local held = name and call('HGET', k .. name, ARGV[a + 1])
    if not held then refused = true; break end
    if op == HEQ_AT then
      if held ~= ARGV[a + 2] then refused = true; break end
    else
      local value = tonumber(held)
      if not value or value <= tonumber(ARGV[a + 2]) then refused = true; break end
    end
    a = a + 3
  elseif op == PICK_OLDEST then
    -- k is the user's active set, the second key its sessions by creation. At the cap or past
    -- it (a rollout lowered it), the oldest active sessions (by creation, then id) are picked,
    -- as many as keep the user within the cap once the create is done. Ids are lowercase
    -- base32 after one prefix, which Lua's `<` (strcoll) orders as bytes in any locale, as the
    -- engine does.
    local sessions = KEYS[count()]
    local active = call('ZRANGEBYSCORE', k, '(' .. ARGV[a], '+inf')
    local cap = tonumber(ARGV[a + 1])
    if #active >= cap and #active > 0 then
      local by_age = {}
      for i, id in ipairs(active) do
        local at = tonumber(call('ZSCORE', sessions, id))
        if not at then refused = true; break end
        by_age[i] = { at, id }
      end
      if refused then break end
      table.sort(by_age, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
      pickeds = {}
      for i = 1, math.min(#active - cap + 1, #active) do pickeds[i] = by_age[i][2] end
      picked = pickeds[1]
    end
    a = a + 2
  elseif op == EACH_PICKED then
    -- The next instructions run for each session picked in turn (see the end of the loop).
    block_ops = count()
    block_left, block_pc, block_a, picked_i = block_ops + 1, pc, a, 1
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
  elseif op == READ_BACK_AT then
    local name = named(KEYS[count()], ARGV[a])
    if name then read_back = call('HGETALL', k .. name) end
    a = a + 1
  elseif op == SET_NAMED then
    local value = named(KEYS[count()], ARGV[a])
    if value then call('SET', k, value) end
    a = a + 1
  elseif op == HPUT_AT then
    -- HSET of its fields on k .. what the naming key holds, whatever the hash holds.
    local name = named(KEYS[count()], ARGV[a])
    local n = count()
    if name then call('HSET', k .. name, unpack(ARGV, a + 1, a + 2 * n)) end
    a = a + 1 + 2 * n
  elseif op == ZADD_AT or op == ZREM_AT or op == INCR_AT or op == HSET_AT or op == HINCRBY_AT then
    -- The key is k .. what the naming key holds.
    local name = named(KEYS[count()], ARGV[a])
    local key = name and k .. name
    if op == ZADD_AT then
      if key then call('ZADD', key, ARGV[a + 1], ARGV[a + 2]) end
      a = a + 3
    elseif op == ZREM_AT then
      if key then call('ZREM', key, ARGV[a + 1]) end
      a = a + 2
    elseif op == INCR_AT then
      if key then call('INCR', key) end
      a = a + 1
    else -- on a hash that has the field already
      if key and call('HGET', key, ARGV[a + 1]) then
        call(op == HSET_AT and 'HSET' or 'HINCRBY', key, ARGV[a + 1], ARGV[a + 2])
      end
      a = a + 3
    end
  elseif op == HDEL_IF_AT then
    -- The key named as above, the field by a third key; removed only where it holds the value.
    local name = named(KEYS[count()], ARGV[a])
    local field = named(KEYS[count()], ARGV[a + 1])
    if name and field and call('HGET', k .. name, field) == ARGV[a + 2] then
      call('HDEL', k .. name, field)
    end
    a = a + 3
  elseif op == MERGE_JSON then
    local field = ARGV[a]
    local made = merges[k .. '\0' .. field]
    if made and made[1] == ARGV[a + 1] then
      merged = made[2]
    else
      merge_json = merge_json or json_merger()
      merged = merge_json(named(k, field) or '{}', ARGV[a + 1])
    end
    if field == '' then call('SET', k, merged) else call('HSET', k, field, merged) end
    a = a + 2
  elseif op == REPORT then
    reported = reported or {}
    reported[#reported + 1] = call('GET', k) or ''
  elseif op == REPORT_PICKED then
    if picked then
      reported = reported or {}
      reported[#reported + 1] = picked
    end
  elseif op == ZADD_PICKED then
    if picked then call('ZADD', k, ARGV[a], picked) end
    a = a + 1
  elseif op == ZREM_PICKED then
    if picked then call('ZREM', k, picked) end
  elseif op == XADD_SESSION or op == XADD_SESSION_AT then
    local n, doc = count(), KEYS[count()]
    if op == XADD_SESSION_AT then -- the document is doc .. what the naming key holds
      local name = named(KEYS[count()], ARGV[a])
      doc = name and doc .. name
      a = a + 1
    end
    if doc then
      session = session_view_writer()(call('HGETALL', doc))
      local entry = { k, '*', unpack(ARGV, a, a + 2 * n - 2) }
      local head = ARGV[a + 2 * n - 1]
      if block_left and picked_i > 1 then
        -- The end of a session picked after the first: an event id of its own, in the entry's
        -- event_id field (the first) and in the envelope (store/mod.rs, picked_event_id: the
        -- name-based UUID, version 5, of the session id in the namespace of the id given).
        local given = entry[4]
        local namespace = given:gsub('-', ''):gsub('..', function(h)
          return string.char(tonumber(h, 16))
        end)
        local h = redis.sha1hex(namespace .. picked)
        local variant = string.format('%x', bit.bor(bit.band(tonumber(h:sub(17, 17), 16), 3), 8))
        local id = h:sub(1, 8) .. '-' .. h:sub(9, 12) .. '-5' .. h:sub(14, 16) .. '-' .. variant
          .. h:sub(18, 20) .. '-' .. h:sub(21, 32)
        local at, to = string.find(head, given, 1, true)
        entry[4], head = id, head:sub(1, at - 1) .. id .. head:sub(to + 1)
      end
      entry[#entry + 1] = head .. session .. ARGV[a + 2 * n]
      call('XADD', unpack(entry))
    end
    a = a + 2 * n + 1
  else
    return redis.error_reply('BADOP unknown opcode ' .. tostring(op))
  end
  if block_left then -- inside an EACH_PICKED block: at its end, again for the next session
    block_left = block_left - 1
    if block_left == 0 then
      picked_i = picked_i + 1
      if pickeds and pickeds[picked_i] then
        picked, pc, a, block_left = pickeds[picked_i], block_pc, block_a, block_ops
      else
        block_left = nil
      end
    end
  end
end
if refused then
  return { 'CONFLICT', explain and call('HGETALL', explain) or {}, ops - first_guard, measured }
end
if list_len or read_back or session or reported or merged then
  return { list_len or -1, read_back or {}, session or '', reported or {}, merged or '' }
end
return 'OK'
