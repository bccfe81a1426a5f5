"""Occupations from the national classification (国家职业分类大典, 2015/2022 codes) used by the simulator.

Only codes the project is confident of; ``special_operation`` marks occupations with a 特种作业
course (低压电工作业, 熔化焊接与热切割作业, ...), ``domestic`` the 家政 occupations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Occupation:
    code: str
    name: str
    short: str  # for course ids
    special_operation: bool = False
    domestic: bool = False


OCCUPATIONS: tuple[Occupation, ...] = (
    Occupation("6-31-01-03", "电工", "ELEC", special_operation=True),
    Occupation("6-18-02-04", "焊工", "WELD", special_operation=True),
    Occupation("6-18-01-01", "车工", "TURN"),
    Occupation("6-18-01-02", "铣工", "MILL"),
    Occupation("6-29-01-01", "砌筑工", "MASON"),
    Occupation("4-12-01-01", "汽车维修工", "AUTO"),
    Occupation("4-03-02-01", "中式烹调师", "CNCOOK"),
    Occupation("4-03-02-02", "中式面点师", "CNPASTRY"),
    Occupation("4-03-02-03", "西式烹调师", "WCOOK"),
    Occupation("4-03-02-04", "西式面点师", "WPASTRY"),
    Occupation("4-03-02-07", "茶艺师", "TEA"),
    Occupation("4-10-01-06", "家政服务员", "DOMESTIC", domestic=True),
    Occupation("4-10-01-05", "养老护理员", "ELDERCARE", domestic=True),
    Occupation("4-10-01-02", "育婴员", "INFANT", domestic=True),
    Occupation("4-07-05-01", "保安员", "SECURITY"),
    Occupation("4-01-02-01", "营销员", "SALES"),
    Occupation("4-01-02-02", "电子商务师", "ECOM"),
    Occupation("4-04-05-01", "计算机程序设计员", "PROG"),
    Occupation("4-04-05-02", "计算机软件测试员", "TEST"),
    Occupation("4-07-02-03", "劳动关系协调员", "LABREL"),
    Occupation("4-07-03-02", "企业人力资源管理师", "HR"),
    Occupation("4-14-02-01", "公共营养师", "NUTRI"),
    Occupation("4-14-02-02", "健康管理师", "HEALTH"),
)

SPECIAL_OPERATION = tuple(o for o in OCCUPATIONS if o.special_operation)
DOMESTIC = tuple(o for o in OCCUPATIONS if o.domestic)
GENERAL = tuple(o for o in OCCUPATIONS if not o.domestic)
