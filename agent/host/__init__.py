"""The host agent (`dpf agent host`): flashes, reboots and wires a host's BlueFields as the controller asks."""
