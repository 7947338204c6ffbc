-- Argo CD health check for votingstack.dev/VotingStack.
-- Argo CD runs this as the body of a function with the live object in `obj`
-- and reads the returned table: hs.status and hs.message.
--
--   Suspended    spec.paused is true
--   Progressing  no status yet, or the operator has not yet observed the
--                current generation (a spec change is still being applied)
--   Degraded     phase Failed, or the Ready condition's reason is one only a
--                user can fix (see docs/reference.md)
--   Healthy      Ready is True for the current generation
--   Progressing  anything else (provisioning, deploying, repairing)
local hs = {}

local terminal = {
  InvalidSpec = true,
  AwsAuthFailed = true,
  AwsInvalidParameter = true,
  AwsQuotaExceeded = true,
  NetworkUnusable = true,
  HostKeyMismatch = true,
  DataVolumeUnusable = true,
  UnsupportedOperatingSystem = true,
  InstanceLaunchFailed = true,
}

local function readyCondition(status)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      return c
    end
  end
  return nil
end

local function describe(cond, fallback)
  if cond == nil then
    return fallback
  end
  local reason = cond.reason or ""
  local message = cond.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif message ~= "" then
    return message
  elseif reason ~= "" then
    return reason
  end
  return fallback
end

local spec = obj.spec or {}
local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local ready = readyCondition(status)

if spec.paused == true then
  hs.status = "Suspended"
  hs.message = describe(ready, "Reconciliation is paused (spec.paused)")
  return hs
end

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if status.phase == "Failed" or (ready ~= nil and terminal[ready.reason] == true) then
  hs.status = "Degraded"
  hs.message = describe(ready, "The stack failed; see its conditions")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "All tiers are ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the stack to become ready")
return hs
