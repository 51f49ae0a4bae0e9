"""Demo mode: `python main.py --demo` answers from the bundled upstream emulator, so a new user sees
the gateway work before finding a cookie. `mode` decides when it applies and what it runs with,
`upstream` runs the emulator inside the gateway, `emulator` is the emulator itself."""
