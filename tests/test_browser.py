"""End to end in headless Chromium: open the page, upload a synthetic scan, see the result.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium;
skipped, saying which is missing, where they cannot be installed.
"""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not available: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(seg_run, cls_run):
    """The app on 127.0.0.1 in a background thread, stopped after the tests."""
    import uvicorn

    from busai.serve import create_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(seg_run, cls_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see Content-Security-Policy reports
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_a_scan_and_see_the_result(server, browser, synthetic_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    scan = next(Path(synthetic_dir, "malignant").glob("malignant (1).png"))
    browser.get(server)
    notice = browser.find_element(By.ID, "notice")
    assert notice.is_displayed() and "not a medical device" in notice.text
    WebDriverWait(browser, 30).until(lambda d: "Segmentation:" in d.find_element(By.ID, "models").text)

    browser.find_element(By.ID, "file-input").send_keys(str(scan))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text

    view = browser.find_element(By.ID, "view")
    overlay = view.get_attribute("src")
    assert overlay.startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", view) == 80
    bars = browser.find_elements(By.CSS_SELECTOR, "#prob-bars .bar")
    assert [b.get_attribute("data-cls") for b in bars] == ["normal", "benign", "malignant"]
    assert "Longest diameter" in browser.find_element(By.ID, "measurements").text

    toggle = browser.find_element(By.ID, "gradcam-toggle")
    assert toggle.is_enabled()
    toggle.click()
    assert view.get_attribute("src") != overlay  # the Grad-CAM heat-map
    browser.save_screenshot(str(tmp_path / "gradcam.png"))
    toggle.click()
    assert view.get_attribute("src") == overlay
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
    # The server's CSP must let the page run as it is: no script, style or image blocked.
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not blocked, blocked


def test_a_rejected_upload_is_explained(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG not really")
    browser.get(server)
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
    assert "cannot be decoded" in browser.find_element(By.ID, "error").text
