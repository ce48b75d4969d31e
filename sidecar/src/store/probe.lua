#!lua flags=no-writes,allow-cross-slot-keys
-- Does each shard have background work? One call per Redis master for many shards' keys
-- (passed as ARGV, so they may span hash slots; they must be on this node).
-- ARGV: triples of kind, key, score: kind 'x' = the stream holds entries (XLEN > 0),
-- 'd' = the sorted set holds a member with score <= score.
-- Returns 1 (work) or 0 (none) per triple; a key this node cannot answer for (its slot moved)
-- reports 1, so the caller looks at that shard directly.
local out = {}
for i = 1, #ARGV, 3 do
  local kind, key, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local r
  if kind == 'x' then
    r = redis.pcall('XLEN', key)
  else
    r = redis.pcall('ZCOUNT', key, '-inf', score)
  end
  if type(r) ~= 'number' or r > 0 then
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
