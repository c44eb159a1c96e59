-- wrk script: POST /nodes/pve1/lxc with a new vmid on every request (each thread its own range).
-- `base` is a global: setup() sets it in each thread's own Lua state.
local counter = 0

function setup(thread)
  thread:set("base", 200000 + counter * 10000000)
  counter = counter + 1
end

local n = 0
function request()
  n = n + 1
  local body = "vmid=" .. (base + n)
    .. "&ostemplate=local%3Avztmpl%2Fdebian-12-standard_12.7-1_amd64.tar.zst"
    .. "&hostname=bench&memory=1024&cores=2&unprivileged=1"
    .. "&rootfs=local-lvm%3A8&net0=name%3Deth0%2Cbridge%3Dvmbr0%2Cip%3Ddhcp"
  return wrk.format("POST", "/api2/json/nodes/pve1/lxc",
    { ["Content-Type"] = "application/x-www-form-urlencoded" }, body)
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
