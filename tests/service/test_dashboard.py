"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): start a
tiny job from the form, watch its progress bar reach the end and its loss chart drawn, find the new version in
the registry table. Saves a screenshot (QRTRAIN_SCREENSHOT, else the test's tmp folder).

    .venv/bin/pytest -m slow tests/service/test_dashboard.py
"""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_dashboard_starts_a_job_and_shows_progress_chart_and_version(make_service, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    service = make_service()
    browser.get(service.url + "/")
    # the page rebuilds its tables every second: an element found a moment ago may be gone, so look again
    wait = WebDriverWait(browser, 240, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda b: len(Select(b.find_element(By.NAME, "model")).options) > 1)
    Select(browser.find_element(By.NAME, "model")).select_by_value("tiny")
    steps = browser.find_element(By.NAME, "steps")
    steps.clear()
    steps.send_keys("12")
    browser.find_element(By.NAME, "extra").send_keys("training.logging_steps=1 training.eval_steps=0 "
                                                     "artifact.name=from-the-page")
    browser.find_element(By.ID, "start").click()

    wait.until(lambda b: b.find_elements(By.ID, "job-1"))
    wait.until(lambda b: b.find_element(By.ID, "job-1").get_attribute("data-status") == "done")
    bar = browser.execute_script("const bar = document.querySelector('#job-1 progress'); return [bar.value, bar.max];")
    assert bar == [12, 12], bar
    points = wait.until(lambda b: int(b.find_element(By.CSS_SELECTOR, "#charts .chart").get_attribute("data-points")
                                      or 0) >= 12 and b.find_element(By.CSS_SELECTOR, "#charts .chart"))
    drawn = browser.execute_script(
        "const c = document.querySelector('#charts canvas'); const chart = Chart.getChart(c);"
        "return [c.width, c.height, chart.data.datasets[0].data.length];")
    assert drawn[0] > 100 and drawn[1] > 100 and drawn[2] == 12, drawn
    assert points is not None
    wait.until(lambda b: "verified" in b.find_element(By.CSS_SELECTOR,
                                                      '#registry tr[data-version="from-the-page/v1"]').text)

    # DPO from that version, from the form: the registry shows the method and the parent
    Select(browser.find_element(By.NAME, "method")).select_by_value("dpo")
    browser.find_element(By.NAME, "init_adapter").send_keys("from-the-page/v1")
    browser.find_element(By.NAME, "beta").send_keys("0.2")
    steps = browser.find_element(By.NAME, "steps")
    steps.clear()
    steps.send_keys("3")
    extra = browser.find_element(By.NAME, "extra")
    extra.clear()
    extra.send_keys("training.logging_steps=1 training.eval_steps=0 artifact.name=dpo-from-the-page")
    browser.find_element(By.ID, "start").click()
    wait.until(lambda b: b.find_elements(By.ID, "job-2"))
    wait.until(lambda b: b.find_element(By.ID, "job-2").get_attribute("data-status") == "done")
    row = '#registry tr[data-version="dpo-from-the-page/v1"]'
    wait.until(lambda b: {"from-the-page/v1", "dpo", "verified"} <= set(b.find_element(By.CSS_SELECTOR, row).text.split()))

    assert "unsigned" in browser.find_element(By.CSS_SELECTOR, row).text

    # the two versions side by side: the method differs, and the config keys that differ are listed
    Select(browser.find_element(By.NAME, "a")).select_by_value("from-the-page/v1")
    Select(browser.find_element(By.NAME, "b")).select_by_value("dpo-from-the-page/v1")
    browser.find_element(By.CSS_SELECTOR, "#diff-form button").click()
    wait.until(lambda b: "method sft dpo" in b.find_element(By.ID, "diff").text)
    assert "config method.name sft dpo" in browser.find_element(By.ID, "diff").text

    # an evaluation job started through the API: its report's chart appears on the page
    evaluation = service.client.post("/api/evaluations", json={"target": "from-the-page/v1",
                                                               "generation": {"max_new_tokens": 8}})
    assert evaluation.status_code == 201, evaluation.text
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#reports canvas"))
    bars = browser.execute_script("const chart = Chart.getChart(document.querySelector('#reports canvas'));"
                                  "return [chart.config.type, chart.data.labels.length];")
    assert bars[0] == "bar" and bars[1] > 0, bars

    screenshot = Path(os.environ.get("QRTRAIN_SCREENSHOT", tmp_path / "dashboard.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
