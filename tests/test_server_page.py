"""The microphone page in Debian's headless Chromium, its fake microphone fed from a WAV
file: partial text appears while it listens, then the final text after Stop."""
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from server_helpers import make_streaming_checkpoint, start_server, write_speechlike_wav  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.timeout(90)
def test_page_shows_partial_then_final_text(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium or chromedriver not found: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    # segments end every 5 s, so the text stays partial until Stop
    model = make_streaming_checkpoint(tmp_path / "model.pt", max_segment=5.0)
    wav = write_speechlike_wav(tmp_path / "mic.wav", seconds=3.0, rate=16000)
    srv = start_server(model)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{srv.service.config.port}/")
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "partial").text.strip())
        assert not driver.find_elements(By.CSS_SELECTOR, "#finals .final")
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "done")
        finals = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#finals .final")]
        assert finals and all(finals)
        assert driver.find_element(By.ID, "partial").text == ""
    finally:
        driver.quit()
        srv.stop()
