# Two entry points: `make demo` and `make test`; each sets up .venv first (fast when complete).
VENV := .venv
SETUP := bash scripts/setup_env.sh
PYTEST_FLAGS ?= -q -p no:cacheprovider --timeout=900
# Interface packages built by the set-up live in .venv/lib (the ROS wheels' start-up hook adds
# it; over a system ROS this does).
export LD_LIBRARY_PATH := $(CURDIR)/$(VENV)/lib$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))

.PHONY: venv test demo clean

venv:
	@$(SETUP)

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS) test

demo: venv
	$(VENV)/bin/threer-ros demo

clean:
	rm -rf $(VENV) build install log out .pytest_cache
