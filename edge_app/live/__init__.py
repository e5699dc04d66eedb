"""The live app: frames in (sources, feeds), one loop, results out (sinks, the web view and kiosk page)."""
