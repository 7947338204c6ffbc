-- Argo CD health check for argoproj.io/Application, so an app of apps waits
-- for the Application of one sync wave to be Healthy before the next wave
-- (Argo CD stopped assessing Application health by default in 1.8).
local hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil and obj.status.health ~= nil then
  hs.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    hs.message = obj.status.health.message
  end
end
return hs
