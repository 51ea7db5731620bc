-- Orthanc -> CT triage: "this study is complete, triage it now".
-- Orthanc calls OnStableStudy once no instance of the study has arrived for "StableAge" seconds (its config).
-- The app then skips its own settle wait. List this file in Orthanc's "LuaScripts" after replacing the two values:
-- the app's notify URL and an API token (POST /api/v1/auth/token/ as a dedicated service user).
local TRIAGE_NOTIFY_URL = '@TRIAGE_NOTIFY_URL@'
local TRIAGE_TOKEN = '@TRIAGE_TOKEN@'

function OnStableStudy(studyId, tags, metadata)
  local body = DumpJson({ study_instance_uid = tags['StudyInstanceUID'], complete = true }, true)
  local headers = { ['Authorization'] = 'Token ' .. TRIAGE_TOKEN, ['Content-Type'] = 'application/json' }
  HttpPost(TRIAGE_NOTIFY_URL, body, headers)
end
