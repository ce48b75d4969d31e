#!lua flags=no-writes,allow-cross-slot-keys
-- Which calls may this connection's user not run? (see store/acl.rs). KEYS[1] only routes the
-- script. ARGV: groups of `n, command, args...` (n = 1 + number of args).
-- Returns each refused call, its words joined by spaces.
local missing = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local call = {}
  for j = 1, n do call[j] = ARGV[i + j] end
  i = i + n + 1
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(call))
  if not ok or not allowed then missing[#missing + 1] = table.concat(call, ' ') end
end
return missing
