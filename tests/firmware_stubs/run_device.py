# Runs firmware_notes/micropython/gateway_device.py on MicroPython's unix port (tests only).
#   micropython run_device.py SCRIPT_DIR UMQTT_DIR SETTINGS_JSON
# SETTINGS_JSON sets the script's settings (MODE, ports, GATEWAY_HOST, ...) before main(),
# as a user edits them at the top of the file.
import json
import sys

script_dir, umqtt_dir, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.append(script_dir)
sys.path.append(umqtt_dir)
import gateway_device  # noqa: E402

for name in settings:
    setattr(gateway_device, name, settings[name])
gateway_device.main()
